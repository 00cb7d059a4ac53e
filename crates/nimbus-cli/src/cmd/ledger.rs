//! `nimbus ledger ...`: get, put, add, list.

use nimbus_core::{Condition, Item, ItemKey};
use serde_json::json;

use crate::args::{EngineArgs, LedgerCmd};
use crate::engine_url;

fn item_json(sort: &str, item: &Item) -> serde_json::Value {
    json!({
        "sort": sort,
        "value": String::from_utf8_lossy(&item.value),
        "counter": item.counter,
        "version": item.version,
    })
}

pub async fn run(engine: &EngineArgs, cmd: LedgerCmd) -> anyhow::Result<()> {
    let ledger = engine_url::open(engine).await?.ledger;
    match cmd {
        LedgerCmd::Get { partition, sort } => {
            let key = ItemKey::new(partition, sort)?;
            let item = ledger
                .get(&key)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no item {key}"))?;
            println!("{}", item_json(&key.sort, &item));
        }
        LedgerCmd::Put {
            partition,
            sort,
            value,
            if_absent,
            if_version,
        } => {
            let key = ItemKey::new(partition, sort)?;
            let condition = match (if_absent, if_version) {
                (true, _) => Condition::Absent,
                (false, Some(v)) => Condition::Version(v),
                (false, None) => Condition::Always,
            };
            match ledger.put(&key, value.into(), condition).await? {
                Some(version) => println!("{key} at version {version}"),
                None => anyhow::bail!("condition failed: {key} was not written ({condition:?})"),
            }
        }
        LedgerCmd::Add {
            partition,
            sort,
            delta,
        } => {
            println!(
                "{}",
                ledger.add(&ItemKey::new(partition, sort)?, delta).await?
            );
        }
        LedgerCmd::List { partition } => {
            for (sort, item) in ledger.list(&partition).await? {
                println!("{}", item_json(&sort, &item));
            }
        }
    }
    Ok(())
}
