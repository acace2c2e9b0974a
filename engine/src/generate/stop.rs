//! Stop strings over a stream of decoded text.
