//! The `fedclip embed` job.
