//! Socket options as a user checks them: set through the config, read back
//! from the pooled connection's own socket with `getsockopt` (socket2), and
//! bad values refused by `build()` with the value and the rule.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use conpool::{Config, Endpoint, Error, Pool};
use socket2::SockRef;
use support::hosts::Hosts;
use support::{EchoServer, TlsCert, round_trip};

const S: Duration = Duration::from_secs(1);

async fn pooled_with(config: Config) -> (Pool, EchoServer) {
    (Pool::new(config), EchoServer::start().await)
}

#[tokio::test]
async fn keepalive_is_off_by_default() {
    let (pool, server) = pooled_with(Config::default()).await;
    let conn = pool.get(&server.endpoint()).await.unwrap();
    let socket = SockRef::from(conn.as_tcp().unwrap());
    assert!(!socket.keepalive().unwrap());
}

#[tokio::test]
async fn tcp_nodelay_is_on_by_default_and_off_when_configured() {
    let (pool, server) = pooled_with(Config::default()).await;
    let conn = pool.get(&server.endpoint()).await.unwrap();
    assert!(SockRef::from(conn.as_tcp().unwrap()).tcp_nodelay().unwrap());

    let nagle = Config::builder().tcp_nodelay(false).build().unwrap();
    let (pool, server) = pooled_with(nagle).await;
    let conn = pool.get(&server.endpoint()).await.unwrap();
    assert!(!SockRef::from(conn.as_tcp().unwrap()).tcp_nodelay().unwrap());
}

#[tokio::test]
async fn keepalive_idle_interval_and_retries_are_set_as_configured() {
    let config = Config::builder()
        .tcp_keepalive(30 * S)
        .tcp_keepalive_interval(7 * S)
        .tcp_keepalive_retries(4)
        .build()
        .unwrap();
    let (pool, server) = pooled_with(config).await;
    let mut conn = pool.get(&server.endpoint()).await.unwrap();
    round_trip(&mut conn, b"ping").await.unwrap();

    let socket = SockRef::from(conn.as_tcp().unwrap());
    assert!(socket.keepalive().unwrap());
    assert_eq!(socket.tcp_keepalive_time().unwrap(), 30 * S);
    assert_eq!(socket.tcp_keepalive_interval().unwrap(), 7 * S);
    assert_eq!(socket.tcp_keepalive_retries().unwrap(), 4);
}

#[tokio::test]
async fn keepalive_applies_under_tls_too() {
    let cert = TlsCert::localhost();
    let server = EchoServer::start_tls(&cert).await;
    let pool = Pool::new(
        Config::builder()
            .tls_config(cert.client_config())
            .tcp_keepalive(45 * S)
            .build()
            .unwrap(),
    );
    let conn = pool.get(&server.tls_endpoint()).await.unwrap();
    assert!(conn.tls_session().is_some());
    let socket = SockRef::from(conn.as_tcp().unwrap());
    assert_eq!(socket.tcp_keepalive_time().unwrap(), 45 * S);
}

#[tokio::test]
async fn buffer_sizes_are_set_before_the_connect() {
    let config = Config::builder()
        .recv_buffer_size(48 * 1024)
        .send_buffer_size(40 * 1024)
        .build()
        .unwrap();
    let (pool, server) = pooled_with(config).await;
    let conn = pool.get(&server.endpoint()).await.unwrap();

    let socket = SockRef::from(conn.as_tcp().unwrap());
    // Linux keeps double the size asked for, its bookkeeping included.
    let factor = if cfg!(target_os = "linux") { 2 } else { 1 };
    assert_eq!(socket.recv_buffer_size().unwrap(), factor * 48 * 1024);
    assert_eq!(socket.send_buffer_size().unwrap(), factor * 40 * 1024);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn tcp_user_timeout_is_set_as_configured() {
    let config = Config::builder()
        .tcp_user_timeout(Duration::from_millis(2500))
        .build()
        .unwrap();
    let (pool, server) = pooled_with(config).await;
    let conn = pool.get(&server.endpoint()).await.unwrap();
    let socket = SockRef::from(conn.as_tcp().unwrap());
    assert_eq!(
        socket.tcp_user_timeout().unwrap(),
        Some(Duration::from_millis(2500))
    );

    let (pool, server) = pooled_with(Config::default()).await;
    let conn = pool.get(&server.endpoint()).await.unwrap();
    let socket = SockRef::from(conn.as_tcp().unwrap());
    assert_eq!(socket.tcp_user_timeout().unwrap(), None, "off by default");
}

#[tokio::test]
async fn connections_are_bound_to_the_local_address() {
    // Loopback is all of 127.0.0.0/8: 127.0.0.3 is a local address of its own.
    let local: IpAddr = "127.0.0.3".parse().unwrap();
    let config = Config::builder().local_address(local).build().unwrap();
    let (pool, server) = pooled_with(config).await;
    let mut conn = pool.get(&server.endpoint()).await.unwrap();
    round_trip(&mut conn, b"ping").await.unwrap();
    assert_eq!(conn.local_addr().unwrap().ip(), local);
}

#[tokio::test]
async fn only_the_hosts_addresses_of_the_local_addresss_family_are_dialed() {
    let server = EchoServer::start().await;
    let hosts = Hosts::new();
    hosts.insert("mixed.test", &["::1", "127.0.0.1"]);
    hosts.insert("v6only.test", &["::1"]);
    let pool = Pool::new(
        Config::builder()
            .resolver(hosts)
            .local_address("127.0.0.1".parse::<IpAddr>().unwrap())
            .build()
            .unwrap(),
    );

    let conn = pool
        .get(&Endpoint::new("mixed.test", server.port()).unwrap())
        .await
        .unwrap();
    assert_eq!(conn.peer_addr(), Some(server.addr));
    drop(conn);

    let endpoint = Endpoint::new("v6only.test", server.port()).unwrap();
    let err = pool.get(&endpoint).await.unwrap_err();
    match &err {
        Error::ConnectionFailed { attempts, .. } => assert_eq!(*attempts, 1, "not retried"),
        other => panic!("expected ConnectionFailed, got {other:?}"),
    }
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "no address of v6only.test is of the family of local_address 127.0.0.1"
    );
}

#[test]
fn bad_socket_options_are_refused_naming_the_value_and_the_rule() {
    let err = |builder: conpool::ConfigBuilder| builder.build().unwrap_err().to_string();
    assert_eq!(
        err(Config::builder().tcp_keepalive(Duration::from_millis(1500))),
        "invalid config: tcp_keepalive is 1.5s; it must be whole seconds from 1s to 32767s (the kernel's unit and limit)"
    );
    assert_eq!(
        err(Config::builder().tcp_keepalive(Duration::ZERO)),
        "invalid config: tcp_keepalive is 0ns; it must be whole seconds from 1s to 32767s (the kernel's unit and limit)"
    );
    assert_eq!(
        err(Config::builder()
            .tcp_keepalive(S)
            .tcp_keepalive_interval(32768 * S)),
        "invalid config: tcp_keepalive_interval is 32768s; it must be whole seconds from 1s to 32767s (the kernel's unit and limit)"
    );
    assert_eq!(
        err(Config::builder().tcp_keepalive(S).tcp_keepalive_retries(0)),
        "invalid config: tcp_keepalive_retries is 0; it must be from 1 to 127 probes"
    );
    assert_eq!(
        err(Config::builder().tcp_keepalive_interval(5 * S)),
        "invalid config: tcp_keepalive_interval is 5s, but tcp_keepalive is None (off); set tcp_keepalive to turn keepalive on"
    );
    assert_eq!(
        err(Config::builder().tcp_keepalive_retries(3)),
        "invalid config: tcp_keepalive_retries is 3, but tcp_keepalive is None (off); set tcp_keepalive to turn keepalive on"
    );
    assert_eq!(
        err(Config::builder().recv_buffer_size(0)),
        "invalid config: recv_buffer_size is 0; it must be from 1 to 2147483647 bytes"
    );
    assert_eq!(
        err(Config::builder().send_buffer_size(1usize << 31)),
        "invalid config: send_buffer_size is 2147483648; it must be from 1 to 2147483647 bytes"
    );
    if cfg!(target_os = "linux") {
        assert_eq!(
            err(Config::builder().tcp_user_timeout(Duration::from_micros(1500))),
            "invalid config: tcp_user_timeout is 1.5ms; it must be whole milliseconds from 1ms to 4294967295ms (or None)"
        );
        assert_eq!(
            err(Config::builder().tcp_user_timeout(Duration::MAX)),
            format!(
                "invalid config: tcp_user_timeout is {:?}; it must be whole milliseconds from 1ms to 4294967295ms (or None)",
                Duration::MAX
            )
        );
    }
}
