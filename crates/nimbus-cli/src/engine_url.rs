//! Engine URLs (`sqlite://PATH`) and the blob location, turned into an [`Engine`].

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nimbus_core::Engine;
use nimbus_sqlite::{SqliteEngine, SqliteOptions};

use crate::args::EngineArgs;

/// The default database when no `--engine` is given.
pub const DEFAULT_ENGINE: &str = "sqlite://./nimbus-data/nimbus.db";

/// A parsed engine URL.
#[derive(Debug, PartialEq, Eq)]
pub enum EngineUrl {
    /// The embedded engine on a database file.
    Sqlite {
        path: PathBuf,
        power_loss_durable: bool,
    },
}

impl EngineUrl {
    /// Parses `sqlite://PATH[?sync=full]`.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let Some((scheme, rest)) = url.split_once("://") else {
            bail!("engine url `{url}` has no scheme; expected sqlite://PATH");
        };
        match scheme {
            "sqlite" => {
                let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
                if path.is_empty() {
                    bail!("engine url `{url}` has no database path; expected sqlite://PATH");
                }
                let mut power_loss_durable = false;
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    match pair {
                        "sync=full" => power_loss_durable = true,
                        "sync=normal" => power_loss_durable = false,
                        other => bail!("engine url `{url}`: unknown option `{other}` (known: sync=full, sync=normal)"),
                    }
                }
                Ok(Self::Sqlite {
                    path: PathBuf::from(path),
                    power_loss_durable,
                })
            }
            other => bail!("engine url `{url}`: unknown engine `{other}`; known: sqlite"),
        }
    }
}

/// Opens the engine the arguments name.
pub fn open(args: &EngineArgs) -> anyhow::Result<Engine> {
    match EngineUrl::parse(&args.engine)? {
        EngineUrl::Sqlite {
            path,
            power_loss_durable,
        } => {
            let options = SqliteOptions {
                durable_against_power_loss: power_loss_durable,
                ..SqliteOptions::default()
            };
            let blobs = blob_dir(args.blobs.as_deref(), &path)?;
            SqliteEngine::open(&path, options)
                .and_then(|e| e.into_engine(&blobs))
                .with_context(|| format!("cannot open engine {}", args.engine))
        }
    }
}

/// `--blobs file://DIR`, or `blobs/` beside the database.
fn blob_dir(blobs: Option<&str>, db: &Path) -> anyhow::Result<PathBuf> {
    match blobs {
        None => Ok(db.parent().unwrap_or(Path::new(".")).join("blobs")),
        Some(url) => match url.strip_prefix("file://") {
            Some(dir) if !dir.is_empty() => Ok(PathBuf::from(dir)),
            _ => bail!("blob url `{url}` is not supported; expected file://DIR"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sqlite_urls_and_names_what_is_wrong() {
        assert_eq!(
            EngineUrl::parse("sqlite://./data/n.db").unwrap(),
            EngineUrl::Sqlite {
                path: "./data/n.db".into(),
                power_loss_durable: false
            }
        );
        assert_eq!(
            EngineUrl::parse("sqlite:///abs/n.db?sync=full").unwrap(),
            EngineUrl::Sqlite {
                path: "/abs/n.db".into(),
                power_loss_durable: true
            }
        );
        for (bad, says) in [
            ("n.db", "no scheme"),
            ("sqlite://", "no database path"),
            ("mysql://x", "unknown engine `mysql`"),
            ("sqlite://x?fast=1", "unknown option `fast=1`"),
        ] {
            let err = EngineUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(blob_dir(Some("s3://b"), Path::new("x.db")).is_err());
        assert_eq!(
            blob_dir(None, Path::new("d/x.db")).unwrap(),
            PathBuf::from("d/blobs")
        );
    }
}
