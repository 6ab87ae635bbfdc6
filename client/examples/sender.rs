//! Sends as `server_2` in the dev layout: an event to `server_1`, a
//! broadcast, a request answered by the `listener` example, and a ping.
//!
//! ```text
//! icom-server --dev                                   # terminal 1
//! cargo run -p icom-client --example listener         # terminal 2
//! cargo run -p icom-client --example sender           # terminal 3
//! ```

use std::time::Duration;

use icom_client::{Client, ClientConfig, SendOptions, Target};
use serde::Serialize;

#[derive(Serialize)]
struct SupplyDrop {
    coords: [f64; 3],
    kind: &'static str,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let identity = std::env::args().nth(1).unwrap_or_else(|| "server_2".into());
    let (client, _events) = Client::connect(ClientConfig::dev(&identity)).await?;

    let drop = SupplyDrop {
        coords: [1234.5, 5678.9, 0.0],
        kind: "ammo",
    };
    let ack = client.send("server_1", "supply_drop", &drop).await?;
    println!("supply_drop: delivered to {}", ack.delivered);

    let ack = client.broadcast("global_alert", "restart in 5 min").await?;
    println!("global_alert: delivered to {}", ack.delivered);

    let options = SendOptions::new().ttl(Duration::from_secs(60));
    let target = Target::Server("server_1".into());
    let ack = client
        .send_to(
            target,
            "bank_transfer",
            serde_json::json!({"amount": 500}),
            options,
        )
        .await?;
    println!(
        "bank_transfer: delivered {}, queued {}",
        ack.delivered, ack.queued
    );

    let reply = client
        .request("server_1", "echo", "hello", Duration::from_secs(5))
        .await?;
    println!("echo reply from {}: {}", reply.from, reply.json()?);

    println!("round trip: {:?}", client.ping().await?);
    client.close().await;
    Ok(())
}
