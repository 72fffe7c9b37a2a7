//! The pieces of the meshlb daemon and CLI.
