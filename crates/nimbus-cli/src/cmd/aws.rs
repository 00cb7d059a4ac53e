//! `nimbus aws up|down|status`: a deployment's resources on AWS, made and removed idempotently
//! (what seed 002's strt_inst.py and terminate.py did by hand, limited to one name prefix).

use std::time::Duration;

use anyhow::bail;
use nimbus_aws::provision::{self, Outcome};
use nimbus_core::{DeadLetter, Engine, ErrorKind, QueueName, QueueOptions, TopicName};
use nimbus_workloads::jobs::EVENTS_TOPIC;

use crate::args::{AwsCmd, EngineArgs};
use crate::engine_url::{self, EngineUrl};

/// The suffix of a work queue's dead-letter queue.
const DEAD_SUFFIX: &str = "-dead";

pub async fn run(args: &EngineArgs, cmd: AwsCmd) -> anyhow::Result<()> {
    let EngineUrl::Aws {
        region,
        endpoint,
        prefix,
    } = EngineUrl::parse(&args.engine)?
    else {
        bail!(
            "`nimbus aws` works on an AWS deployment: pass --engine aws://?region=R&prefix=P (got {})",
            args.engine
        );
    };
    let (aws, blobs) = engine_url::connect_aws(args, region, endpoint, prefix).await?;
    let engine = aws.engine(&blobs)?;
    let clients = aws.clients();
    let deployment = format!("deployment `{}` in {}", clients.prefix, clients.region());
    match cmd {
        AwsCmd::Up { max_receives } => {
            println!("{deployment}");
            report(
                "table",
                &clients.table(),
                provision::create_table(clients).await?,
            );
            report(
                "bucket",
                &blobs.to_string(),
                provision::create_bucket(clients, &blobs).await?,
            );
            let topic = TopicName::new(EVENTS_TOPIC)?;
            let existed = engine.topic.subscriptions(&topic).await.is_ok();
            engine.topic.create_topic(&topic).await?;
            report(
                "topic",
                topic.as_str(),
                if existed {
                    Outcome::Existed
                } else {
                    Outcome::Created
                },
            );
            for name in nimbus_workloads::kinds::all_queues() {
                let (dead, queue) = create_work_queue(&engine, name, max_receives).await?;
                report("queue", dead.0.as_str(), dead.1);
                report("queue", queue.0.as_str(), queue.1);
            }
        }
        AwsCmd::Down { delete_blobs } => {
            println!("{deployment}");
            for topic in [TopicName::new(EVENTS_TOPIC)?] {
                let outcome = match engine.topic.delete_topic(&topic).await {
                    Ok(()) => Outcome::Removed,
                    Err(e) if e.kind() == ErrorKind::NotFound => Outcome::Absent,
                    Err(e) => return Err(e.into()),
                };
                report("topic", topic.as_str(), outcome);
            }
            for queue in aws.deployment_queues().await? {
                engine.queue.delete_queue(&queue).await?;
                report("queue", queue.as_str(), Outcome::Removed);
            }
            report(
                "table",
                &clients.table(),
                provision::delete_table(clients).await?,
            );
            if delete_blobs {
                let (count, bucket) = provision::delete_blobs(clients, &blobs).await?;
                println!("  blobs   {blobs}: {count} deleted");
                report("bucket", &blobs.bucket, bucket);
            } else {
                println!("  blobs   {blobs}: kept (pass --delete-blobs to remove them)");
            }
        }
        AwsCmd::Status => {
            println!("{deployment}");
            println!(
                "  {:<40} {:>9} {:>9} {:>9}",
                "queue", "visible", "in flight", "delayed"
            );
            for queue in aws.deployment_queues().await? {
                let d = engine.queue.depth(&queue).await?;
                println!(
                    "  {:<40} {:>9} {:>9} {:>9}",
                    queue.as_str(),
                    d.visible,
                    d.in_flight,
                    d.delayed
                );
            }
            let items = provision::table_item_count(clients).await?;
            println!("  ledger table {}: {items} items", clients.table());
        }
    }
    Ok(())
}

fn report(what: &str, name: &str, outcome: Outcome) {
    println!("  {what:<7} {name}: {outcome}");
}

/// Creates `name` and its dead-letter queue; an existing queue (whatever its options) is kept.
async fn create_work_queue(
    engine: &Engine,
    name: &str,
    max_receives: u32,
) -> anyhow::Result<((QueueName, Outcome), (QueueName, Outcome))> {
    let dead = QueueName::new(format!("{name}{DEAD_SUFFIX}"))?;
    let dead_options = QueueOptions {
        retention: Duration::from_secs(14 * 24 * 3600),
        ..QueueOptions::default()
    };
    let dead_outcome = create(engine, &dead, &dead_options).await?;
    let queue = QueueName::new(name)?;
    let options = QueueOptions {
        dead_letter: Some(DeadLetter {
            queue: dead.clone(),
            max_receives,
        }),
        ..QueueOptions::default()
    };
    let outcome = create(engine, &queue, &options).await?;
    Ok(((dead, dead_outcome), (queue, outcome)))
}

async fn create(
    engine: &Engine,
    queue: &QueueName,
    options: &QueueOptions,
) -> anyhow::Result<Outcome> {
    let existed = engine.queue.queue_options(queue).await.is_ok();
    match engine.queue.create_queue(queue, options).await {
        Ok(()) if existed => Ok(Outcome::Existed),
        Ok(()) => Ok(Outcome::Created),
        Err(e) if e.kind() == ErrorKind::Conflict => Ok(Outcome::Existed),
        Err(e) => Err(e.into()),
    }
}
