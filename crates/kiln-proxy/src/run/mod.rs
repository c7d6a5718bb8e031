//! `kiln proxy`'s main: the listeners (fresh, or a predecessor's taken
//! over), the worker threads, the admin API, SIGHUP reloads and the drain
//! at the end.
//!
//! For: running the data plane as its own process, which outlives the
//! controller. Must never: read kiln's store or its state; everything it
//! knows comes from its flags, its releases or site file and its admin API.

mod services;

/// `kiln proxy`: where to listen, the initial releases, the behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyRun {
    pub listen: std::net::SocketAddr,
    pub admin: Option<std::net::SocketAddr>,
    pub releases: Vec<crate::TableEntry>,
    /// More releases, from a JSON file re-read on SIGHUP.
    pub releases_file: Option<std::path::PathBuf>,
    /// On SIGTERM or Ctrl-C, how long requests in flight get to finish.
    pub shutdown_grace: std::time::Duration,
    pub config: crate::ProxyConfig,
    pub workers: usize,
    /// Where a successor may take the listeners over (see [`crate::handoff`]).
    pub handoff: Option<std::path::PathBuf>,
    /// A predecessor's handoff socket: serve on its listeners, then it stops.
    pub take_over: Option<std::path::PathBuf>,
    /// HTTPS on `listen`, with this certificate for these hosts.
    pub tls: Option<TlsRun>,
    /// A plain-HTTP listener answering every request with a redirect to
    /// HTTPS (see [`crate::redirect`]).
    pub redirect_http: Option<std::net::SocketAddr>,
    /// Every service on `listen`, from a site file (see [`crate::SiteFile`]);
    /// then `releases`, `releases_file` and `tls` are not used, and
    /// `config` gives what the file does not say.
    pub site: Option<std::path::PathBuf>,
}

/// `kiln proxy --tls-cert F --tls-key K [--host H ...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRun {
    pub files: crate::tls::TlsFiles,
    /// The names served (SNI); none: every name gets the certificate.
    pub hosts: Vec<String>,
}

/// How often certificate files are looked at for a rotation.
const CERT_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// The proxy's listeners and its redirect listener: a predecessor's (the
/// very sockets, so its accept queue carries over) with its backends'
/// health, or fresh ones.
type Listeners = (Vec<std::net::TcpListener>, Option<std::net::TcpListener>, Option<crate::handoff::Inherited>);

fn proxy_listeners(run: &ProxyRun, site: &crate::Site) -> std::io::Result<Listeners> {
    let Some(path) = &run.take_over else {
        let redirect = run.redirect_http.map(|a| crate::bind(a, 1)).transpose()?.and_then(|mut v| v.pop());
        return Ok((crate::bind(run.listen, run.workers)?, redirect, None));
    };
    let mut inh = crate::handoff::take_over(path).map_err(std::io::Error::other)?;
    let state: crate::Succession = serde_json::from_slice(&inh.state)
        .map_err(|e| std::io::Error::other(format!("{}: the predecessor's state: {e}", path.display())))?;
    let mut listeners = Vec::new();
    let mut redirect = None;
    let mut others = Vec::new();
    for l in std::mem::take(&mut inh.fds).into_iter().map(std::net::TcpListener::from) {
        let at = l.local_addr()?;
        if at == run.listen {
            listeners.push(l);
        } else if Some(at) == run.redirect_http {
            redirect = Some(l);
        } else {
            others.push(at);
        }
    }
    if listeners.is_empty() && others.is_empty() {
        return Err(std::io::Error::other(format!("--take-over {}: no listener was handed over", path.display())));
    }
    if listeners.is_empty() {
        let m = format!(
            "--take-over {}: the predecessor listens on {others:?}, not --listen {}",
            path.display(),
            run.listen
        );
        return Err(std::io::Error::other(m));
    }
    for at in others {
        // A redirect listener this proxy no longer has: closed here, and
        // in the predecessor when it exits.
        eprintln!("kiln proxy: {at}: no longer listened on");
    }
    // A redirect listener the predecessor did not have is bound afresh.
    if redirect.is_none() {
        redirect = run.redirect_http.map(|a| crate::bind(a, 1)).transpose()?.and_then(|mut v| v.pop());
    }
    site.inherit(&state);
    Ok((listeners, redirect, Some(inh)))
}

/// Offers this proxy's listeners to a successor on `path`; `handed` is
/// notified once one serves on them.
fn offer_listeners(
    path: &std::path::Path,
    site: std::sync::Arc<crate::Site>,
    fds: Vec<std::os::fd::OwnedFd>,
    handed: std::sync::Arc<tokio::sync::Notify>,
) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let offer = crate::handoff::Offer::bind(path).map_err(std::io::Error::other)?;
    std::thread::spawn(move || loop {
        let result = offer.accept().and_then(|successor| {
            let state = serde_json::to_vec(&site.succession()).expect("serializes");
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            successor.hand_over(&borrowed, &state, std::time::Duration::from_secs(30))
        });
        match result {
            Ok(true) => return handed.notify_one(),
            Ok(false) => eprintln!("kiln proxy: the successor went away before it served; still serving"),
            Err(e) => eprintln!("kiln proxy: {e}; still serving"),
        }
    });
    Ok(())
}

/// `kiln proxy`'s main: serves until SIGTERM, Ctrl-C or a successor
/// takes the listeners over, then drains for the grace period.
pub fn run(run: ProxyRun) -> std::io::Result<()> {
    // SAFETY: sets a signal disposition before any thread of this process
    // starts. rustls writes records with writev, which (unlike send with
    // MSG_NOSIGNAL) raises SIGPIPE on a connection the client has closed;
    // the CLI's default action for it would end the whole load balancer.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // Certificates before listeners: a pair that fails its checks leaves a
    // predecessor serving.
    let services = services::Services::load(&run, kiln_core::time::now_secs()).map_err(std::io::Error::other)?;
    let site = services.site.clone();
    let tls = match &services.certs {
        Some(certs) => {
            Some(crate::tls::server_config(certs.clone(), &[b"h2", b"http/1.1"]).map_err(std::io::Error::other)?)
        }
        None => None,
    };
    let (listeners, redirect, inherited) = proxy_listeners(&run, &site)?;
    // Copies kept for a successor: the same sockets, not new ones.
    let mut keep =
        listeners.iter().map(|l| l.try_clone().map(std::os::fd::OwnedFd::from)).collect::<Result<Vec<_>, _>>()?;
    let main_sockets = keep.len();
    if let Some(r) = &redirect {
        keep.push(r.try_clone()?.into());
    }
    // Every socket of the SO_REUSEPORT group needs an acceptor; extra
    // workers share one.
    let mut workers = listeners;
    for i in workers.len()..run.workers.max(1) {
        let extra = workers[i % main_sockets].try_clone()?;
        workers.push(extra);
    }
    let bound = workers[0].local_addr()?;
    let n = workers.len();
    crate::start(site.clone(), workers, tls)?;
    if let Some(inh) = inherited {
        inh.ready().map_err(std::io::Error::other)?;
        eprintln!("kiln proxy: took over {bound} from its predecessor");
    }
    let handed = std::sync::Arc::new(tokio::sync::Notify::new());
    if let Some(path) = &run.handoff {
        offer_listeners(path, site.clone(), keep, handed.clone())?;
    }
    eprintln!("kiln proxy: listening on {bound} with {n} worker threads");
    // Admin API, health checks, reloads and signals share one more thread.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let services = std::sync::Arc::new(services);
    let run = std::sync::Arc::new(run);
    let reload: crate::admin::Reload = {
        let (services, run) = (services.clone(), run.clone());
        std::sync::Arc::new(move || services.reload(&run, kiln_core::time::now_secs()))
    };
    rt.block_on(async move {
        if let Some(a) = run.admin {
            let admin = tokio::net::TcpListener::bind(a).await?;
            eprintln!("kiln proxy: admin API on {}", admin.local_addr()?);
            tokio::spawn(crate::serve_admin(site.clone(), admin, reload.clone()));
        }
        for r in site.routes().iter() {
            tokio::spawn(r.proxy.clone().health_loop());
        }
        if let Some(r) = redirect {
            r.set_nonblocking(true)?;
            eprintln!("kiln proxy: redirecting plain HTTP on {} to https", r.local_addr()?);
            let l = tokio::net::TcpListener::from_std(r)?;
            tokio::spawn(crate::redirect::serve_redirects(l, bound.port(), site.clone()));
        }
        if let Some(certs) = services.certs.clone() {
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(CERT_POLL).await;
                    for r in certs.reload(kiln_core::time::now_secs()) {
                        match r {
                            crate::tls::Reload::Loaded { cert, not_after } => eprintln!(
                                "kiln proxy: {}: reloaded, valid until {}",
                                cert.display(),
                                kiln_core::time::rfc3339(not_after)
                            ),
                            crate::tls::Reload::Kept(e) => {
                                eprintln!("kiln proxy: certificate not reloaded, the old one is served: {e}")
                            }
                        }
                    }
                }
            });
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = handed.notified() => {
                    eprintln!("kiln proxy: a successor serves on the listeners; stopping");
                    break;
                }
                _ = hup.recv() => {
                    // A bad file changes nothing: the current table keeps serving.
                    match reload() {
                        Ok(what) => eprintln!("kiln proxy: {what}"),
                        Err(e) => eprintln!("kiln proxy: reload refused, nothing changed: {e}"),
                    }
                }
            }
        }
        // New connections are refused (or, after a handoff, go to the
        // successor); what is in flight finishes, and each open connection
        // closes after its next answer, up to the grace period.
        site.stop();
        let deadline = std::time::Instant::now() + run.shutdown_grace;
        while (site.in_flight() > 0 || site.connections() > 0) && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        eprintln!("kiln proxy: stopped, {} in flight cut", site.in_flight());
        Ok(())
    })
}
