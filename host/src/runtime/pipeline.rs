//! Pipelines: a named chain of plugins where each stage's response payload is
//! the next stage's request payload. A failing stage stops the pipeline and
//! the error names it.

use serde::Serialize;

use crate::error::CallError;

/// A named chain of plugins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pipeline {
    /// The pipeline's name.
    pub name: String,
    /// Plugin names, in order.
    pub stages: Vec<String>,
    /// Whether the stages' key-value writes and events commit together
    /// when the last stage succeeds, or not at all.
    pub transaction: bool,
}

/// Why a pipeline call failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// No pipeline has this name.
    #[error("no pipeline named `{0}`")]
    Unknown(String),
    /// A stage failed; the pipeline stopped there.
    #[error("pipeline `{pipeline}` failed at stage {} of {stages} (`{}`): {error}", stage + 1, error.plugin)]
    Stage {
        /// The pipeline.
        pipeline: String,
        /// The 0-based index of the failing stage.
        stage: usize,
        /// How many stages the pipeline has.
        stages: usize,
        /// The stage's error (its `plugin` is the stage's plugin).
        error: Box<CallError>,
    },
    /// Every stage succeeded but the pipeline's transaction could not
    /// commit (a conflict, a quota); nothing was kept.
    #[error("pipeline `{pipeline}` could not commit: {}", error.cause)]
    Commit {
        /// The pipeline.
        pipeline: String,
        /// Why (its `plugin` is the last stage's plugin).
        error: Box<CallError>,
    },
}

impl PipelineError {
    /// The kind of the underlying failure (`unknown_plugin` for an unknown
    /// pipeline).
    pub fn kind(&self) -> crate::ErrorKind {
        match self {
            PipelineError::Unknown(_) => crate::ErrorKind::UnknownPlugin,
            PipelineError::Stage { error, .. } | PipelineError::Commit { error, .. } => {
                error.kind()
            }
        }
    }
}
