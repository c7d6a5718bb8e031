//! Instances leaving, and the traffic table: an instance is drained at its
//! load balancer (in a thread, so a long drain never holds the loop up),
//! then stopped, frozen or removed; the table is computed from the
//! recorded state and sent when it changed.
//!
//! For: the acts that take traffic away and give it. Must never: decide
//! which instance leaves (the rollout and the heal policy do).

use super::*;

impl Controller<'_> {
    /// Drains an instance at the load balancer (it gets no new requests at
    /// once; those in flight have `deadline_ms`, then are cut, and an
    /// idempotent one that had no answer yet is retried elsewhere), in a
    /// background thread. Once drained it is asked to stop (or, in
    /// quarantine, frozen): see [`Controller::finish_retiring`]. Idempotent.
    pub(super) fn retire(&mut self, name: &str, r: &InstanceRecord, deadline_ms: u64, then: Then) {
        if self.retiring.contains_key(r.id.as_str()) {
            return;
        }
        let dp = self.services[name].dp.clone();
        let done = Arc::new(AtomicBool::new(false));
        let (flag, a) = (done.clone(), addr(r));
        std::thread::spawn(move || {
            // A backend the proxy never knew (or retired already) has
            // nothing to drain, nor has a service without a load balancer.
            if let Some(dp) = dp {
                let _ = dp.drain(a, deadline_ms);
            }
            flag.store(true, Ordering::SeqCst);
        });
        self.retiring.insert(r.id.to_string(), Retiring { service: name.to_owned(), done, then });
    }

    /// Waits (up to `deadline`) for the drains in flight and carries out
    /// what follows them, so that a successor controller inherits no
    /// half-retired instance (`kiln serve --upgrade`).
    pub fn settle(&mut self, deadline: std::time::Instant, now_ms: impl Fn() -> u64) {
        while !self.retiring.is_empty() && std::time::Instant::now() < deadline {
            let names: Vec<String> = self.services.keys().cloned().collect();
            for name in names {
                if let Err(e) = self.finish_retiring(&name, now_ms()) {
                    eprintln!("kiln serve: {e}");
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops (or freezes) the instances whose drain has ended.
    pub(super) fn finish_retiring(&mut self, name: &str, now_ms: u64) -> Result<(), ServeError> {
        let done: Vec<(String, Then)> = self
            .retiring
            .iter()
            .filter(|(_, r)| r.service == name && r.done.load(Ordering::SeqCst))
            .map(|(id, r)| (id.clone(), r.then))
            .collect();
        for (id, then) in done {
            self.retiring.remove(&id);
            match then {
                Then::Stop => {
                    let _ = self.runtime().request_stop(&id, false);
                }
                Then::Pause => self.freeze(name, &id, now_ms)?,
            }
            self.changed();
        }
        Ok(())
    }

    /// Removes the service's instances that were asked to stop and have
    /// exited; kills those still running past their grace period.
    pub(super) fn reap(&mut self, name: &str, now_ms: u64) -> Result<(), ServeError> {
        let all = self.all()?;
        let rt = self.runtime();
        for r in all.iter().filter(|r| r.service == name && r.stop_requested && r.release.is_some()) {
            if r.state.is_exited() {
                let _ = rt.remove(r.id.as_str(), true);
                self.stopping.remove(r.id.as_str());
                self.changed();
                continue;
            }
            let since = *self.stopping.entry(r.id.to_string()).or_insert(now_ms);
            if now_ms.saturating_sub(since) > r.stop_grace_secs * 1000 {
                let _ = rt.request_stop(r.id.as_str(), true);
            }
        }
        Ok(())
    }

    /// The routing table the state asks for, from what runs.
    pub(super) fn table(&self, name: &str, live: &[InstanceRecord]) -> Vec<TableEntry> {
        let svc = &self.services[name];
        let st = &svc.state;
        let of = |id: &str, only_healthy: bool| -> Vec<SocketAddr> {
            let threshold = svc.spec.release.health.healthy_threshold;
            let mut v: Vec<SocketAddr> = live
                .iter()
                .filter(|r| r.release.as_deref() == Some(id))
                .filter(|r| !only_healthy || self.prober.health(r.id.as_str()).passes >= threshold)
                .map(addr)
                .collect();
            v.sort();
            v
        };
        let new_percent = st.rollout.as_ref().map_or(0, |a| a.rollout.new_percent);
        let mut t = Vec::new();
        if let Some(s) = &st.stable {
            let w = if st.rollout.is_some() { 100 - new_percent } else { 100 };
            t.push(TableEntry { release: s.id.clone(), weight: w, backends: of(&s.id, false), fault: None });
        }
        if let Some(a) = &st.rollout {
            if st.stable.as_ref().is_none_or(|s| s.id != a.rollout.release) {
                t.push(TableEntry {
                    release: a.rollout.release.clone(),
                    weight: new_percent,
                    backends: of(&a.rollout.release, true),
                    fault: a.drill.map(|_| DRILL_FAULT),
                });
            }
        }
        if let Some((p, _)) = &st.previous {
            if t.iter().all(|e| e.release != p.id) {
                t.push(TableEntry { release: p.id.clone(), weight: 0, backends: of(&p.id, false), fault: None });
            }
        }
        t
    }

    /// Sends the table to the proxy when it changed (or always, `force`).
    pub(super) fn sync(&mut self, name: &str, force: bool) -> Result<(), ServeError> {
        let mut live = self.live(name)?;
        // A quarantined instance stays listed (draining: no new requests)
        // until its drain ends, so that the drain can cut what it holds.
        let q = &self.services[name].state.quarantined;
        live.extend(self.all()?.into_iter().filter(|r| {
            q.contains_key(r.id.as_str()) && self.retiring.contains_key(r.id.as_str()) && !r.state.is_exited()
        }));
        let t = self.table(name, &live);
        let svc = self.services.get_mut(name).expect("known service");
        let Some(dp) = &svc.dp else { return Ok(()) };
        if force || svc.sent.as_ref() != Some(&t) {
            dp.set_table(&t)?;
            svc.sent = Some(t);
        }
        Ok(())
    }
}
