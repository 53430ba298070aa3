//! The canopy-docker test images' only file: a tiny std-only HTTP server,
//! built static by scripts/test-images.sh and imported as the whole rootfs.
//!
//! `server`            serve HTTP/1.x on 0.0.0.0:$PORT (default 8080):
//!   GET /health       200 {"status":"ok"}, or 503 when SERVER_UNHEALTHY is set
//!   GET /env/NAME     200 {"name":…,"value":…} or 404
//!   GET /file/PATH    200 with the file's contents (e.g. /file/data/hello) or 404
//!   GET anything else 200 {"release":$CANOPY_RELEASE,"service":$CANOPY_SERVICE,
//!                          "path":…,"uid":…,"args":[…]}
//! `server --probe`    GET 127.0.0.1:$PORT/health, exit 0 on 200, else 1 (the HEALTHCHECK)
//!
//! SERVER_CRASH=N makes it log two lines and exit with code N at start.
//! SIGTERM ends it at once with code 0 (as PID 1 it would otherwise be ignored).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

extern "C" {
    fn signal(signum: i32, handler: extern "C" fn(i32)) -> usize;
    fn _exit(status: i32) -> !;
}

extern "C" fn on_sigterm(_: i32) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { _exit(0) }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

fn port() -> u16 {
    env("PORT").parse().unwrap_or(8080)
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn probe() -> i32 {
    let result = (|| -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port()))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    })();
    match result {
        Ok(status) if status.starts_with("HTTP/1.1 200") => {
            println!("health: {status}");
            0
        }
        Ok(status) => {
            println!("health: {status}");
            1
        }
        Err(err) => {
            println!("health: {err}");
            1
        }
    }
}

fn respond(mut stream: TcpStream, status: &str, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body));
}

fn handle(stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(stream.take(16 * 1024));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => return,
            Ok(_) if header == "\r\n" || header == "\n" => break,
            Ok(_) => {}
        }
    }
    let stream = reader.into_inner().into_inner();
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_string();
    if path == "/health" {
        if env("SERVER_UNHEALTHY").is_empty() {
            respond(stream, "200 OK", "application/json", br#"{"status":"ok"}"#);
        } else {
            respond(stream, "503 Service Unavailable", "application/json", br#"{"status":"unhealthy"}"#);
        }
        return;
    }
    println!("{} {path}", request_line.split_whitespace().next().unwrap_or("?"));
    if let Some(name) = path.strip_prefix("/env/") {
        match std::env::var(name) {
            Ok(value) => {
                let body = format!("{{\"name\":{},\"value\":{}}}", json_string(name), json_string(&value));
                respond(stream, "200 OK", "application/json", body.as_bytes());
            }
            Err(_) => respond(stream, "404 Not Found", "application/json", br#"{"error":"unset"}"#),
        }
        return;
    }
    if let Some(file) = path.strip_prefix("/file") {
        match std::fs::read(file) {
            Ok(contents) => respond(stream, "200 OK", "text/plain", &contents),
            Err(err) => respond(stream, "404 Not Found", "text/plain", err.to_string().as_bytes()),
        }
        return;
    }
    let uid = std::fs::metadata("/proc/self").map(|meta| meta.uid()).unwrap_or(u32::MAX);
    let args: Vec<String> = std::env::args().skip(1).map(|arg| json_string(&arg)).collect();
    let body = format!(
        "{{\"release\":{},\"service\":{},\"path\":{},\"uid\":{uid},\"args\":[{}]}}",
        json_string(&env("CANOPY_RELEASE")),
        json_string(&env("CANOPY_SERVICE")),
        json_string(&path),
        args.join(",")
    );
    respond(stream, "200 OK", "application/json", body.as_bytes());
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--probe") {
        std::process::exit(probe());
    }
    // SAFETY: installs a handler that only calls _exit.
    unsafe { signal(15, on_sigterm) };
    let release = env("CANOPY_RELEASE");
    println!("starting release {release:?} service {:?}", env("CANOPY_SERVICE"));
    if let Ok(code) = env("SERVER_CRASH").parse::<i32>() {
        eprintln!("fatal: SERVER_CRASH={code} is set, exiting with code {code}");
        std::process::exit(code);
    }
    if !env("SERVER_UNHEALTHY").is_empty() {
        println!("SERVER_UNHEALTHY is set: /health answers 503");
    }
    let listener = match TcpListener::bind(("0.0.0.0", port())) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("fatal: cannot listen on port {}: {err}", port());
            std::process::exit(2);
        }
    };
    println!("listening on 0.0.0.0:{}", port());
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || handle(stream));
    }
}
