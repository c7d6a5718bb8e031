//! An instance's life after its start: stop (SIGTERM, then SIGKILL after
//! the grace), a stop asked without waiting, kill, pause and resume (runc
//! freezes its cgroup), and removal with what it leaves on the host.
//!
//! For: acting on one instance through the driver. Must never: start one
//! (`Runtime::run` does), or decide which instance goes.

use super::*;

impl Runtime<'_> {
    fn wait_exit(&self, r: &mut InstanceRecord, timeout: Duration) -> Result<bool, RunError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.observe(r)?;
            if r.state.is_exited() {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends the stop signal, waits the grace period, then kills.
    pub fn stop(&self, reference: &str, grace: Option<Duration>) -> Result<InstanceRecord, RunError> {
        let mut r = self.find(reference)?;
        self.observe(&mut r)?;
        if r.state.is_exited() {
            return Ok(r);
        }
        r.stop_requested = true;
        self.save(&r)?;
        let id = r.id.to_string();
        if r.state == InstanceState::Paused {
            let _ = self.driver.resume(&id);
        }
        let grace = grace.unwrap_or(Duration::from_secs(r.stop_grace_secs));
        let _ = self.driver.signal(&id, &r.stop_signal);
        if !self.wait_exit(&mut r, grace)? {
            let _ = self.driver.signal(&id, "SIGKILL");
            if !self.wait_exit(&mut r, Duration::from_secs(10))? {
                return Err(RunError::Invalid(format!("instance {id} did not exit after SIGKILL")));
            }
        }
        self.cleanup(&r.id);
        Ok(r)
    }

    /// Asks an instance to stop and returns at once: the stop is recorded,
    /// then its stop signal (SIGKILL with `kill`) is sent. For callers that
    /// cannot wait (the release controller's loop); they call it again with
    /// `kill` once the grace period is over, and remove the instance once
    /// it has exited. Idempotent.
    pub fn request_stop(&self, reference: &str, kill: bool) -> Result<InstanceRecord, RunError> {
        let mut r = self.find(reference)?;
        self.observe(&mut r)?;
        if r.state.is_exited() {
            return Ok(r);
        }
        if !r.stop_requested {
            r.stop_requested = true;
            self.save(&r)?;
        }
        let id = r.id.to_string();
        if r.state == InstanceState::Paused {
            let _ = self.driver.resume(&id);
        }
        let _ = self.driver.signal(&id, if kill { "SIGKILL" } else { &r.stop_signal });
        Ok(r)
    }

    /// SIGKILLs an instance without recording a stop: to whoever watches it,
    /// it failed (chaos testing). Idempotent once it has exited.
    pub fn kill(&self, reference: &str) -> Result<InstanceRecord, RunError> {
        let mut r = self.find(reference)?;
        self.observe(&mut r)?;
        if !r.state.is_exited() {
            self.driver.signal(r.id.as_str(), "SIGKILL")?;
        }
        Ok(r)
    }

    /// Freezes an instance (quarantine): out of traffic, processes kept.
    pub fn pause(&self, reference: &str) -> Result<InstanceRecord, RunError> {
        let mut r = self.find(reference)?;
        self.driver.pause(r.id.as_str())?;
        // Recorded at once: observing a running instance skips `runc state`.
        if r.state == InstanceState::Running {
            r.state = InstanceState::Paused;
            self.save(&r)?;
        }
        self.observe(&mut r)?;
        Ok(r)
    }

    pub fn resume(&self, reference: &str) -> Result<InstanceRecord, RunError> {
        let mut r = self.find(reference)?;
        self.driver.resume(r.id.as_str())?;
        if r.state == InstanceState::Paused {
            r.state = InstanceState::Running;
            self.save(&r)?;
        }
        self.observe(&mut r)?;
        Ok(r)
    }

    /// Removes an exited instance (or, with `force`, kills it first). Its
    /// logs stay in the central store.
    pub fn remove(&self, reference: &str, force: bool) -> Result<InstanceRecord, RunError> {
        let mut r = self.find(reference)?;
        self.observe(&mut r)?;
        if !r.state.is_exited() {
            if !force {
                return Err(RunError::NotExited(r.id.clone(), r.state.name()));
            }
            r = self.stop(r.id.as_str(), Some(Duration::ZERO))?;
        }
        self.logs()
            .ingest(&self.log_meta(&r), &self.instance_dir(&r.id), now_ms(), true)
            .map_err(io_err(&self.home))?;
        self.driver.delete(r.id.as_str(), true)?;
        self.cleanup(&r.id);
        let dir = self.instance_dir(&r.id);
        fs::remove_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(r)
    }
}
