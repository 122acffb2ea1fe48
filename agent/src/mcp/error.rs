//! Structured tool errors: `{"error": {"kind", "message", "fix", "details"?}}`, returned as a
//! tool result with `isError: true`, so an agent can read what went wrong and what to do next.
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct ToolError {
    /// Stable, snake_case: `service_not_found`, `wrong_port`, `key_exists`, `route_not_found`,
    /// `invalid_input`, `agent_unreachable`, `request_failed`, `unsupported`, `api_error`,
    /// `routes_file`.
    pub kind: String,
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
    pub fn new(kind: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
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
        Self::new("invalid_input", message, fix)
    }

    pub fn api(e: impl std::fmt::Display) -> Self {
        Self::new(
            "api_error",
            format!("Kubernetes API: {e}"),
            "check the kubeconfig (--kubeconfig), that the API server is reachable, and that \
             your user has the permissions listed in the README (\"For coding agents\")",
        )
    }

    pub fn body(self) -> ErrorBody {
        ErrorBody { error: self }
    }
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (fix: {})", self.kind, self.message, self.fix)
    }
}

pub type ToolResult<T> = Result<T, ToolError>;
