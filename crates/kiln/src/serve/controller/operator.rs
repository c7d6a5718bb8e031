//! A person's requests on a release in progress: `kiln promote` (past a
//! pause) and `kiln abort` (back to stable), each recorded before the next
//! tick acts on it.
//!
//! For: the acts a person starts. Must never: decide a release's next step
//! (the rollout does, from what these record).

use super::*;
use crate::serve::answer;

impl Controller<'_> {
    /// `kiln promote`: past the pause the release waits at (recorded
    /// before the next tick acts on it).
    pub(super) fn promote(&mut self, service: &str, now_ms: u64) -> Result<answer::Promoted, ServeError> {
        let svc = self.services.get_mut(service).ok_or_else(|| ServeError::UnknownService(service.to_owned()))?;
        match svc.state.rollout.as_mut() {
            Some(a) if a.drill.is_some() => {
                Err(Conflict::DrillNotPromoted { service: service.to_owned(), release: a.rollout.release.clone() }
                    .into())
            }
            Some(a) if a.rollout.paused.is_some() => {
                a.rollout.promoted = true;
                a.rollout.paused = None;
                // Time spent waiting for a person is no lack of
                // progress: the deadline counts from now.
                a.rollout.step_started_ms = now_ms;
                let id = a.rollout.release.clone();
                self.save(service, now_ms)?;
                Ok(answer::Promoted { service: service.to_owned(), release: id, promoted: true })
            }
            Some(a) => Err(Conflict::NotPaused {
                service: service.to_owned(),
                release: a.rollout.release.clone(),
                step: a.rollout.index + 1,
                steps: a.rollout.steps.len(),
            }
            .into()),
            None => Err(Conflict::NoReleaseInProgress { service: service.to_owned() }.into()),
        }
    }

    /// `kiln abort`: the release in progress fails, traffic back to stable.
    pub(super) fn abort(&mut self, service: &str, actor: &str, now_ms: u64) -> Result<answer::Aborted, ServeError> {
        let Some(a) = self.service(service)?.state.rollout.clone() else {
            return Err(Conflict::NoReleaseInProgress { service: service.to_owned() }.into());
        };
        let id = a.rollout.release.clone();
        self.fail(service, a, format!("aborted by {actor}"), None, Outcome::Aborted, now_ms)?;
        Ok(answer::Aborted { service: service.to_owned(), release: id, aborted: true })
    }
}
