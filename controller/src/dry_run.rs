//! The dry-run switch of the Put handlers: a request with the metadata `skiff-dry-run: 1` is
//! checked and normalised as a Put would be, and answered with the record it would store —
//! nothing is stored (`skiff diff` compares files with the server this way).

/// The request metadata that turns a Put into a dry run.
pub const HEADER: &str = "skiff-dry-run";

/// Whether a Put request asks only to check and normalise.
pub fn requested<T>(req: &tonic::Request<T>) -> bool {
    req.metadata()
        .get(HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v, "1" | "true"))
}
