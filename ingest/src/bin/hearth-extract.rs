//! The extraction process on its own, for tests and for deployments that want a separate binary.
fn main() {
    std::process::exit(hearth_ingest::extract_worker_main());
}
