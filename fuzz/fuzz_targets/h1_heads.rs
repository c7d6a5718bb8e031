//! Feeds arbitrary bytes to the proxy's HTTP/1 head parsers and chunked
//! decoder. Nothing may panic; a head the proxy writes for the next hop
//! must itself parse as exactly one complete head (no header injection,
//! no second message smuggled inside it); the chunked decoder never claims
//! more bytes than it was given.
#![no_main]

use kiln_proxy::h1;
use libfuzzer_sys::fuzz_target;

fn one_head(out: &[u8], request: bool) {
    let mut headers = [httparse::EMPTY_HEADER; 256];
    let status = if request {
        httparse::Request::new(&mut headers).parse(out)
    } else {
        httparse::Response::new(&mut headers).parse(out)
    };
    match status {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "trailing bytes after the written head"),
        other => panic!("the written head does not parse: {other:?}: {:?}", String::from_utf8_lossy(out)),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut out = Vec::new();
    let fwd = h1::Forward {
        client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        https: true,
        sticky_header: Some("x-user"),
        generated_id: &|| h1::RequestId::generate(1, 2),
    };
    if let Ok(Some(info)) = h1::request(data, &fwd, &mut out) {
        assert!(info.head_len <= data.len());
        one_head(&out, true);
        if let Some((s, e)) = info.sticky_cookie {
            assert!(s <= e && e <= info.head_len);
        }
    }
    let reply = h1::Reply {
        request_id: b"id",
        release: Some("r"),
        set_cookie: Some("r"),
        head_method: data.first() == Some(&b'H'),
        close: data.len() % 2 == 0,
        http10_keep_alive: false,
        chunked_ok: data.len() % 3 == 0,
    };
    if let Ok(Some(info)) = h1::response(data, &reply, &mut out) {
        assert!(info.head_len <= data.len());
        one_head(&out, false);
    }
    let mut c = h1::Chunked::default();
    if let Ok(n) = c.feed(data) {
        assert!(n <= data.len());
    }
});
