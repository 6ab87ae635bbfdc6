//! Listens as `server_1` in the dev layout and prints every event; answers
//! `echo` requests.
//!
//! ```text
//! icom-server --dev                                   # terminal 1
//! cargo run -p icom-client --example listener         # terminal 2
//! cargo run -p icom-client --example sender           # terminal 3
//! ```

use icom_client::{Client, ClientConfig, State};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let identity = std::env::args().nth(1).unwrap_or_else(|| "server_1".into());
    let (client, mut events) = Client::connect(ClientConfig::dev(&identity)).await?;
    eprintln!("listening as {identity}; Ctrl-C to stop");

    let mut states = client.states();
    tokio::spawn(async move {
        while let Some(state) = states.next().await {
            if state != State::Closed {
                eprintln!("connection: {state:?}");
            }
        }
    });

    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(event) = event else { break };
        let data = event.json().unwrap_or(serde_json::Value::Null);
        println!(
            "{} from {} (id {}): {data}",
            event.event, event.from, event.id
        );
        if event.event == "echo" {
            event.reply(serde_json::json!({ "echo": data })).await?;
        }
    }
    client.close().await;
    Ok(())
}
