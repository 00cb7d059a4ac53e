//! `nimbus topic ...`: create, subscribe, unsubscribe, subscriptions, publish.

use nimbus_core::{Filter, QueueName, TopicName};

use crate::args::{EngineArgs, TopicCmd};
use crate::engine_url;

pub async fn run(engine: &EngineArgs, cmd: TopicCmd) -> anyhow::Result<()> {
    let topic = engine_url::open(engine).await?.topic;
    match cmd {
        TopicCmd::Create { name } => {
            let name = TopicName::new(name)?;
            topic.create_topic(&name).await?;
            println!("topic {name} ready");
        }
        TopicCmd::Subscribe {
            topic: name,
            queue,
            filters,
        } => {
            let filter = (!filters.is_empty()).then(|| {
                Filter(
                    filters
                        .into_iter()
                        .map(|(k, values)| (k, values.split(',').map(str::to_string).collect()))
                        .collect(),
                )
            });
            let sub = topic
                .subscribe(&TopicName::new(name)?, &QueueName::new(queue)?, filter)
                .await?;
            println!("{}", sub.id);
        }
        TopicCmd::Unsubscribe { subscription } => topic.unsubscribe(&subscription).await?,
        TopicCmd::Subscriptions { topic: name } => {
            for s in topic.subscriptions(&TopicName::new(name)?).await? {
                let filter = s
                    .filter
                    .map(|f| serde_json::to_string(&f.0).unwrap_or_default())
                    .unwrap_or_default();
                println!("{}\t{}\t{filter}", s.id, s.queue);
            }
        }
        TopicCmd::Publish {
            topic: name,
            body,
            attributes,
        } => {
            let id = topic
                .publish(
                    &TopicName::new(name)?,
                    body.into(),
                    super::attributes(attributes),
                )
                .await?;
            println!("{id}");
        }
    }
    Ok(())
}
