//! The `pulsar-proxy` binary and its control port. No broker needed: the
//! control commands act on the proxy's own listener.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::time::timeout;

#[tokio::test]
async fn control_port_drives_the_proxy() {
    timeout(Duration::from_secs(30), async {
        // Nothing listens there; only matters once a client connects.
        let broker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker_addr = broker.local_addr().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pulsar-proxy"))
            .args(["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0"])
            .arg("--broker")
            .arg(broker_addr.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn pulsar-proxy");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = stdout.next_line().await.unwrap().expect("ready line");
        // "listening A broker B control C"
        let words: Vec<&str> = ready.split_whitespace().collect();
        assert_eq!(words[0], "listening", "{ready}");
        let listen: SocketAddr = words[1].parse().unwrap();
        let control: SocketAddr = words[5].parse().unwrap();

        let (rd, mut wr) = TcpStream::connect(control).await.unwrap().into_split();
        let mut replies = BufReader::new(rd).lines();
        let mut ask = async |cmd: &str| {
            wr.write_all(format!("{cmd}\n").as_bytes()).await.unwrap();
            replies.next_line().await.unwrap().expect("reply")
        };

        assert!(ask("status")
            .await
            .starts_with("ok connections=0 stalled=false refusing=false"));
        assert!(ask("stall").await.contains("stalled=true"));
        assert!(ask("resume").await.contains("stalled=false"));
        assert!(ask("refuse").await.contains("refusing=true"));
        let err = TcpStream::connect(listen).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        assert!(ask("accept").await.contains("refusing=false"));
        let _client = TcpStream::connect(listen).await.expect("listening again");
        let (_conn, _) = broker.accept().await.expect("proxy dialled the broker");
        assert!(ask("cut").await.starts_with("ok "));
        assert!(ask("hangup").await.contains("hangup=true"));
        assert!(ask("frobnicate").await.starts_with("error "));
        child.kill().await.ok();
    })
    .await
    .expect("timed out");
}
