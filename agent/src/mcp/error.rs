//! Structured tool errors: `{"error": {"kind", "message", "fix", "details"?}}`, returned as a
//! tool result with `isError: true`, so an agent can read what went wrong and what to do next.
use std::fmt;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

/// What kind of error a tool returned: stable, snake_case on the wire, so an agent can act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ToolErrorKind {
    /// No such service (`details.services` lists them).
    ServiceNotFound,
    /// A service name found in several namespaces.
    AmbiguousService,
    /// Not a port of the service (`details.valid_ports`, maybe `details.suggested_port`).
    WrongPort,
    /// The routing key (or the route's name) is already taken.
    KeyExists,
    /// No route with that key.
    RouteNotFound,
    /// A routing key used in several namespaces.
    AmbiguousKey,
    /// A parameter is malformed or inconsistent.
    InvalidInput,
    /// No agent answered.
    AgentUnreachable,
    /// An agent answered something this version cannot read.
    AgentError,
    /// The test request could not be made or answered.
    RequestFailed,
    /// The cluster lacks what the tool needs (e.g. an agent pod to take an image from).
    Unsupported,
    /// The user's credentials lack a permission; the fix names it.
    Forbidden,
    /// An admission policy (Pod Security, a webhook) refused an object: not a permission.
    Admission,
    /// Any other Kubernetes API failure.
    ApiError,
    /// The routes file (no-cluster mode) cannot be read or written.
    RoutesFile,
    /// No sandbox (or pod, for get_logs) of that name.
    SandboxNotFound,
    /// A sandbox of that name exists already.
    SandboxExists,
    /// The sandbox did not become Ready (`details`: how its process ended, its last log lines).
    SandboxNotReady,
    /// This session has as many live sandboxes as it may (`details.delete_one_of`).
    SandboxLimit,
    /// Created by another session or a person: deleting it takes `force: true`.
    NotOwned,
}

impl ToolErrorKind {
    /// The wire string (what `kind` serializes to).
    pub fn as_str(self) -> &'static str {
        match self {
            ToolErrorKind::ServiceNotFound => "service_not_found",
            ToolErrorKind::AmbiguousService => "ambiguous_service",
            ToolErrorKind::WrongPort => "wrong_port",
            ToolErrorKind::KeyExists => "key_exists",
            ToolErrorKind::RouteNotFound => "route_not_found",
            ToolErrorKind::AmbiguousKey => "ambiguous_key",
            ToolErrorKind::InvalidInput => "invalid_input",
            ToolErrorKind::AgentUnreachable => "agent_unreachable",
            ToolErrorKind::AgentError => "agent_error",
            ToolErrorKind::RequestFailed => "request_failed",
            ToolErrorKind::Unsupported => "unsupported",
            ToolErrorKind::Forbidden => "forbidden",
            ToolErrorKind::Admission => "admission",
            ToolErrorKind::ApiError => "api_error",
            ToolErrorKind::RoutesFile => "routes_file",
            ToolErrorKind::SandboxNotFound => "sandbox_not_found",
            ToolErrorKind::SandboxExists => "sandbox_exists",
            ToolErrorKind::SandboxNotReady => "sandbox_not_ready",
            ToolErrorKind::SandboxLimit => "sandbox_limit",
            ToolErrorKind::NotOwned => "not_owned",
        }
    }
}

impl fmt::Display for ToolErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ToolError {
    pub kind: ToolErrorKind,
    /// What went wrong, in one or two sentences.
    pub message: String,
    /// What to do about it.
    pub fix: String,
    /// Extra structured context (valid ports, candidate services, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// The error result's shape.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ToolError,
}

impl ToolError {
    pub fn new(kind: ToolErrorKind, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            fix: fix.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn invalid(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::new(ToolErrorKind::InvalidInput, message, fix)
    }

    pub fn api(e: impl fmt::Display) -> Self {
        Self::new(
            ToolErrorKind::ApiError,
            format!("Kubernetes API: {e}"),
            "check the kubeconfig (--kubeconfig), that the API server is reachable, and that \
             your user has the permissions listed in the README (\"For coding agents\")",
        )
    }

    pub fn body(self) -> ErrorBody {
        ErrorBody { error: self }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} (fix: {})", self.kind, self.message, self.fix)
    }
}

pub type ToolResult<T> = Result<T, ToolError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_serialize_as_their_wire_strings() {
        use ToolErrorKind::*;
        for k in [
            ServiceNotFound,
            AmbiguousService,
            WrongPort,
            KeyExists,
            RouteNotFound,
            AmbiguousKey,
            InvalidInput,
            AgentUnreachable,
            AgentError,
            RequestFailed,
            Unsupported,
            Forbidden,
            ApiError,
            RoutesFile,
            SandboxNotFound,
            SandboxExists,
            SandboxNotReady,
            SandboxLimit,
            NotOwned,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        let e = ToolError::invalid("bad", "fix it").body();
        assert_eq!(
            serde_json::to_value(e).unwrap(),
            serde_json::json!({ "error": { "kind": "invalid_input", "message": "bad", "fix": "fix it" } })
        );
    }
}
