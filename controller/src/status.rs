//! Domain errors as the edge reports them, in one place: as gRPC statuses (every service
//! returns `?` on a `CoreError` or `StoreError`) and as HTTP codes (the HTTP listener).

use axum::http::StatusCode;
use tonic::Status;

use crate::core::CoreError;
use crate::store::StoreError;

impl From<CoreError> for Status {
    fn from(e: CoreError) -> Status {
        match e {
            CoreError::NoSuchTask(id) => Status::not_found(format!("no task {id}")),
            CoreError::Illegal(e) => Status::failed_precondition(e.to_string()),
            CoreError::NoSuchQueue(name) => Status::not_found(format!("no queue {name:?}")),
            CoreError::NoSuchService(name) => {
                Status::not_found(format!("no service {name:?} (see skiff services ls)"))
            }
            CoreError::Refused(why) => Status::failed_precondition(why),
            CoreError::NodeOffline(offline) => Status::unavailable(offline.to_string()),
            CoreError::BadReference(why) => Status::invalid_argument(why),
            CoreError::Store(e) => e.into(),
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Status {
        Status::internal(format!("state store: {e}"))
    }
}

/// The HTTP code for a gRPC status code, for operations the HTTP listener shares with a
/// service.
pub fn http_code(code: tonic::Code) -> StatusCode {
    match code {
        tonic::Code::Ok => StatusCode::OK,
        tonic::Code::InvalidArgument | tonic::Code::OutOfRange => StatusCode::BAD_REQUEST,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::AlreadyExists | tonic::Code::Aborted => StatusCode::CONFLICT,
        tonic::Code::FailedPrecondition => StatusCode::PRECONDITION_FAILED,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        tonic::Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The HTTP code for a store failure: the request may be retried.
pub fn http_store_code(_: &StoreError) -> StatusCode {
    StatusCode::SERVICE_UNAVAILABLE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_errors_map_to_the_codes_a_client_acts_on() {
        let s: Status = CoreError::NoSuchTask("t".into()).into();
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::NotFound, "no task t")
        );
        let s: Status = CoreError::BadReference("task_role: no role".into()).into();
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(http_code(s.code()), StatusCode::BAD_REQUEST);
        assert_eq!(http_code(tonic::Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(
            http_code(tonic::Code::PermissionDenied),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            http_code(tonic::Code::Internal),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
