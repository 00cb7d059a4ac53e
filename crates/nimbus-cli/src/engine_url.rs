//! Engine URLs (`sqlite://PATH`, `aws://?region=..`) and the blob location, turned into an
//! [`Engine`].

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
    /// SQS, SNS, DynamoDB and S3 (or an emulator at `endpoint`), names prefixed with `prefix`.
    Aws {
        region: Option<String>,
        endpoint: Option<String>,
        prefix: String,
    },
}

/// The default name prefix of an AWS deployment.
pub const DEFAULT_AWS_PREFIX: &str = "nimbus-";

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
            "aws" => Self::parse_aws(url, rest),
            other => bail!("engine url `{url}`: unknown engine `{other}`; known: sqlite, aws"),
        }
    }

    /// Parses the part after `aws://`: `?region=R&endpoint=URL&prefix=P`, each optional.
    fn parse_aws(url: &str, rest: &str) -> anyhow::Result<Self> {
        let Some(query) = rest.strip_prefix('?').or(rest.is_empty().then_some("")) else {
            bail!("engine url `{url}`: expected aws://?region=R&endpoint=URL&prefix=P");
        };
        let (mut region, mut endpoint, mut prefix) = (None, None, DEFAULT_AWS_PREFIX.to_string());
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("region", v)) if !v.is_empty() => region = Some(v.to_string()),
                Some(("endpoint", v)) if v.starts_with("http://") || v.starts_with("https://") => {
                    endpoint = Some(v.to_string());
                }
                Some(("endpoint", v)) => {
                    bail!("engine url `{url}`: endpoint `{v}` is not an http:// or https:// URL")
                }
                Some(("prefix", v)) => prefix = v.to_string(),
                _ => bail!(
                    "engine url `{url}`: unknown option `{pair}` (known: region=R, endpoint=URL, prefix=P)"
                ),
            }
        }
        Ok(Self::Aws {
            region,
            endpoint,
            prefix,
        })
    }
}

/// Opens the engine the arguments name.
pub async fn open(args: &EngineArgs) -> anyhow::Result<Engine> {
    match EngineUrl::parse(&args.engine)? {
        EngineUrl::Aws {
            region,
            endpoint,
            prefix,
        } => open_aws(args, region, endpoint, prefix).await,
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

#[cfg(feature = "aws")]
async fn open_aws(
    args: &EngineArgs,
    region: Option<String>,
    endpoint: Option<String>,
    prefix: String,
) -> anyhow::Result<Engine> {
    let (aws, blobs) = connect_aws(args, region, endpoint, prefix).await?;
    Ok(aws.engine(&blobs)?)
}

#[cfg(not(feature = "aws"))]
async fn open_aws(
    args: &EngineArgs,
    _region: Option<String>,
    _endpoint: Option<String>,
    _prefix: String,
) -> anyhow::Result<Engine> {
    bail!(
        "engine url `{}` needs the AWS engine, which this nimbus was built without; build with `--features aws`",
        args.engine
    )
}

/// Connects to the AWS engine the arguments name (which must be `aws://`) and parses its blob
/// location (which must be `s3://`).
#[cfg(feature = "aws")]
pub async fn connect_aws(
    args: &EngineArgs,
    region: Option<String>,
    endpoint: Option<String>,
    prefix: String,
) -> anyhow::Result<(nimbus_aws::AwsEngine, nimbus_aws::S3Location)> {
    let Some(blobs) = args.blobs.as_deref() else {
        bail!("the aws engine needs a bucket for blobs: --blobs s3://BUCKET[/PREFIX] (or NIMBUS_BLOBS)");
    };
    let location = nimbus_aws::S3Location::parse(blobs)?;
    let config = nimbus_aws::AwsConfig {
        region,
        endpoint,
        prefix,
        credentials: None,
    };
    let aws = nimbus_aws::AwsEngine::connect(config)
        .await
        .with_context(|| format!("cannot open engine {}", args.engine))?;
    Ok((aws, location))
}

/// The AWS engine, where the arguments name one (`aws://`); `None` for another engine.
#[cfg(feature = "aws")]
pub async fn aws_engine(args: &EngineArgs) -> anyhow::Result<Option<nimbus_aws::AwsEngine>> {
    match EngineUrl::parse(&args.engine)? {
        EngineUrl::Aws {
            region,
            endpoint,
            prefix,
        } => Ok(Some(connect_aws(args, region, endpoint, prefix).await?.0)),
        EngineUrl::Sqlite { .. } => Ok(None),
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
            ("aws://?zone=x", "unknown option `zone=x`"),
            ("aws://?endpoint=localhost:5000", "not an http"),
            ("aws://host", "expected aws://?"),
            ("sqlite://x?fast=1", "unknown option `fast=1`"),
        ] {
            let err = EngineUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(blob_dir(Some("s3://b"), Path::new("x.db")).is_err());
        assert_eq!(
            EngineUrl::parse("aws://?region=eu-west-1&endpoint=http://127.0.0.1:5000&prefix=lab-")
                .unwrap(),
            EngineUrl::Aws {
                region: Some("eu-west-1".into()),
                endpoint: Some("http://127.0.0.1:5000".into()),
                prefix: "lab-".into()
            }
        );
        assert_eq!(
            EngineUrl::parse("aws://").unwrap(),
            EngineUrl::Aws {
                region: None,
                endpoint: None,
                prefix: DEFAULT_AWS_PREFIX.into()
            }
        );
        assert_eq!(
            blob_dir(None, Path::new("d/x.db")).unwrap(),
            PathBuf::from("d/blobs")
        );
    }
}
