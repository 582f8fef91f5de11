//! The controller's error type and its one mapping to gRPC status codes.

/// Everything the controller can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The caller's identity lacks the role for this call.
    #[error("{identity} is {role} and {action} needs {needed}: ask an admin to map {identity} to {needed} in the controller's [roles]")]
    PermissionDenied {
        /// Certificate identity.
        identity: String,
        /// Its role ("no role" when unmapped).
        role: String,
        /// What was asked.
        action: &'static str,
        /// The role it needs.
        needed: &'static str,
    },
    /// The client's certificate is not a user certificate: an agent's, the
    /// controller's own, or one without a Roomy kind (made by hand or by an
    /// older roomyctl).
    #[error("{identity:?} presented {what}, and roomyctl needs a user certificate: issue one with `roomyctl certs issue --dir PKI user NAME`")]
    NotAUser {
        /// Certificate identity.
        identity: String,
        /// What it presented, in words.
        what: String,
    },
    /// No verified client identity on the connection.
    #[error("no client certificate identity: connect over mutual TLS with a certificate from the fleet's CA")]
    Unauthenticated,
    /// Unknown host name.
    #[error(
        "no host {0:?}: `roomyctl hosts ls` lists them, `roomyctl hosts add NAME ADDRESS` adds one"
    )]
    UnknownHost(String),
    /// Bad input.
    #[error("{0}")]
    Invalid(String),
    /// An agent answered with an error: passed through with its host.
    #[error("{host}: {message}")]
    Agent {
        /// Host name.
        host: String,
        /// The agent's status code.
        code: tonic::Code,
        /// The agent's message.
        message: String,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
    /// The store did not answer (etcd without a majority, or unreachable):
    /// worth retrying, nothing was changed by this call.
    #[error("store unavailable: {0}")]
    StoreUnavailable(String),
    /// Configuration is wrong.
    #[error("config: {0}")]
    Config(String),
}

impl ControllerError {
    /// An agent's status, with the host it came from. A host that cannot be
    /// reached says so in words.
    pub fn from_agent(host: &str, status: tonic::Status) -> Self {
        let message = match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                format!("agent unreachable ({}): check `roomyctl hosts ls` and that roomy-agent runs there", status.message())
            }
            _ => status.message().to_string(),
        };
        ControllerError::Agent {
            host: host.to_string(),
            code: status.code(),
            message,
        }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ControllerError::PermissionDenied { .. } | ControllerError::NotAUser { .. } => {
                Code::PermissionDenied
            }
            ControllerError::Unauthenticated => Code::Unauthenticated,
            ControllerError::UnknownHost(_) => Code::NotFound,
            ControllerError::Invalid(_) => Code::InvalidArgument,
            ControllerError::Agent { code, .. } => *code,
            ControllerError::StoreUnavailable(_) => Code::Unavailable,
            ControllerError::Store(_) | ControllerError::Config(_) => Code::Internal,
        }
    }
}

/// The one place controller errors become gRPC codes.
impl From<ControllerError> for tonic::Status {
    fn from(err: ControllerError) -> Self {
        tonic::Status::new(err.code(), err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    /// Every variant and its code, in one place: a new variant fails to
    /// compile in `code()` and must be added here.
    #[test]
    fn each_error_maps_to_its_grpc_code() {
        let s = || "x".to_string();
        let table = [
            (
                ControllerError::PermissionDenied {
                    identity: s(),
                    role: s(),
                    action: "resize",
                    needed: "operator",
                },
                Code::PermissionDenied,
            ),
            (
                ControllerError::NotAUser {
                    identity: s(),
                    what: s(),
                },
                Code::PermissionDenied,
            ),
            (ControllerError::Unauthenticated, Code::Unauthenticated),
            (ControllerError::UnknownHost(s()), Code::NotFound),
            (ControllerError::Invalid(s()), Code::InvalidArgument),
            (
                ControllerError::Agent {
                    host: s(),
                    code: Code::FailedPrecondition,
                    message: s(),
                },
                Code::FailedPrecondition,
            ),
            (ControllerError::Store(s()), Code::Internal),
            (ControllerError::StoreUnavailable(s()), Code::Unavailable),
            (ControllerError::Config(s()), Code::Internal),
        ];
        for (err, code) in table {
            let text = err.to_string();
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
    }
}
