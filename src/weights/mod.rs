//! Model directory loading.
