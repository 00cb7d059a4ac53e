//! `nimbus queue ...`: create, send, receive, delete, depth, list, purge, remove.

use std::io::BufRead;

use anyhow::Context;
use nimbus_core::{DeadLetter, OutgoingMessage, QueueName, QueueOptions, Receipt, ReceiveRequest};
use serde_json::json;

use crate::args::{EngineArgs, QueueCmd};
use crate::engine_url;

pub async fn run(engine: &EngineArgs, cmd: QueueCmd) -> anyhow::Result<()> {
    let queue = engine_url::open(engine).await?.queue;
    match cmd {
        QueueCmd::Create {
            name,
            visibility_timeout,
            retention,
            max_message_bytes,
            content_dedup,
            dead_letter,
            max_receives,
        } => {
            let name = QueueName::new(name)?;
            let dead_letter = match (dead_letter, max_receives) {
                (Some(q), Some(max_receives)) => Some(DeadLetter {
                    queue: QueueName::new(q)?,
                    max_receives,
                }),
                _ => None,
            };
            let options = QueueOptions {
                visibility_timeout,
                retention,
                max_message_bytes,
                content_based_dedup: content_dedup,
                dead_letter,
            };
            queue.create_queue(&name, &options).await?;
            println!("queue {name} ready");
        }
        QueueCmd::Send {
            queue: name,
            bodies,
            stdin,
            attributes,
            group,
            dedup_id,
            delay,
        } => {
            let name = QueueName::new(name)?;
            let bodies = if stdin {
                std::io::stdin()
                    .lock()
                    .lines()
                    .collect::<Result<Vec<_>, _>>()
                    .context("cannot read standard input")?
            } else {
                bodies
            };
            anyhow::ensure!(
                !bodies.is_empty(),
                "nothing to send: give BODY arguments or --stdin"
            );
            let attributes = super::attributes(attributes);
            let messages: Vec<_> = bodies
                .into_iter()
                .map(|body| OutgoingMessage {
                    body: body.into(),
                    attributes: attributes.clone(),
                    delay: delay.unwrap_or_default(),
                    group_id: group.clone(),
                    dedup_id: dedup_id.clone(),
                })
                .collect();
            let mut sent = 0;
            for chunk in messages.chunks(nimbus_core::queue::MAX_BATCH) {
                for id in queue.send_batch(&name, chunk.to_vec()).await? {
                    println!("{id}");
                }
                sent += chunk.len();
            }
            eprintln!("sent {sent} message(s) to {name}");
        }
        QueueCmd::Receive {
            queue: name,
            max,
            wait,
            visibility,
            delete,
        } => {
            let name = QueueName::new(name)?;
            let mut request = ReceiveRequest::new(max).wait(wait);
            request.visibility_timeout = visibility;
            let got = queue.receive(&name, request).await?;
            for d in &got {
                let line = json!({
                    "message_id": d.message_id,
                    "receipt": d.receipt.0,
                    "receive_count": d.receive_count,
                    "group_id": d.group_id,
                    "attributes": d.attributes,
                    "body": String::from_utf8_lossy(&d.body),
                });
                println!("{line}");
            }
            if delete && !got.is_empty() {
                let receipts: Vec<_> = got.iter().map(|d| d.receipt.clone()).collect();
                queue.delete_batch(&name, &receipts).await?;
            }
            if got.is_empty() {
                eprintln!("no message in {name}");
            }
        }
        QueueCmd::Delete {
            queue: name,
            receipts,
        } => {
            let name = QueueName::new(name)?;
            let receipts: Vec<_> = receipts.into_iter().map(Receipt).collect();
            queue.delete_batch(&name, &receipts).await?;
            eprintln!("deleted {} message(s) from {name}", receipts.len());
        }
        QueueCmd::Visibility {
            queue: name,
            receipt,
            timeout,
        } => {
            queue
                .change_visibility(&QueueName::new(name)?, &Receipt(receipt), timeout)
                .await?;
        }
        QueueCmd::Depth { queues } => {
            let names = if queues.is_empty() {
                queue.list_queues().await?
            } else {
                queues
                    .into_iter()
                    .map(QueueName::new)
                    .collect::<Result<_, _>>()?
            };
            println!(
                "{:<40} {:>10} {:>10} {:>10}",
                "queue", "visible", "in flight", "delayed"
            );
            for name in names {
                let d = queue.depth(&name).await?;
                println!(
                    "{:<40} {:>10} {:>10} {:>10}",
                    name.as_str(),
                    d.visible,
                    d.in_flight,
                    d.delayed
                );
            }
        }
        QueueCmd::List => {
            for name in queue.list_queues().await? {
                println!("{name}");
            }
        }
        QueueCmd::Purge { queue: name } => {
            let name = QueueName::new(name)?;
            queue.purge(&name).await?;
            eprintln!("purged {name}");
        }
        QueueCmd::Remove { queue: name } => {
            let name = QueueName::new(name)?;
            queue.delete_queue(&name).await?;
            eprintln!("removed {name}");
        }
    }
    Ok(())
}
