//! CPU encoders.
