//! `nimbus scale simulate`: traces replayed against the scaling policies, side by side.

use anyhow::Context;
use nimbus_scale::policy::{self, Bounds, Policy, Tuning};
use nimbus_scale::simulate::{self, Model, Request};
use nimbus_scale::{report, trace};

use crate::args::{ScaleCmd, SimulateArgs};

pub fn run(cmd: ScaleCmd) -> anyhow::Result<()> {
    match cmd {
        ScaleCmd::Simulate(args) => simulate(&args),
    }
}

fn simulate(args: &SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.max >= 1, "--max must be at least 1");
    anyhow::ensure!(
        args.min <= args.max,
        "--min {} is over --max {}",
        args.min,
        args.max
    );
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(!args.interval.is_zero(), "--interval must be more than 0");
    let bounds = Bounds {
        min: args.min,
        max: args.max,
    };
    let names: Vec<&str> = if args.policies.is_empty() {
        policy::NAMES.to_vec()
    } else {
        args.policies.iter().map(String::as_str).collect()
    };
    let policies = names
        .iter()
        .map(|name| {
            let tuning = Tuning {
                min: Some(bounds.min),
                max: Some(bounds.max),
                per_instance: Some(f64::from(args.concurrency)),
                ..Tuning::default()
            };
            policy::by_name(name, &tuning).with_context(|| {
                format!(
                    "no policy `{name}`; the policies are {}",
                    policy::NAMES.join(", ")
                )
            })
        })
        .collect::<anyhow::Result<Vec<Box<dyn Policy>>>>()?;
    let model = Model {
        launch: args.launch_time,
        start: args.start_time,
        interval: args.interval,
        concurrency: args.concurrency,
        ..Model::default()
    };
    for (name, requests) in traces(args)? {
        if let Some(dir) = &args.write_traces {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("{name}.csv"));
            std::fs::write(&path, trace::format(&requests))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        let outcomes: Vec<_> = policies
            .iter()
            .map(|p| simulate::run(&requests, p.as_ref(), &model))
            .collect();
        println!(
            "trace {name}: {} requests; launch {:?}, start {:?}, decisions every {:?}, {} at once per instance, {} to {} instances\n",
            requests.len(),
            model.launch,
            model.start,
            model.interval,
            model.concurrency,
            bounds.min,
            bounds.max
        );
        println!("{}", report::table(&outcomes));
        if let Some(dir) = &args.charts {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(format!("{name}.svg"));
            let svg = report::chart(&format!("{name}: active instances"), &outcomes)?;
            std::fs::write(&path, svg)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("chart: {}\n", path.display());
        }
    }
    Ok(())
}

/// The traces the arguments name: a file, a burst, or generated ones.
fn traces(args: &SimulateArgs) -> anyhow::Result<Vec<(String, Vec<Request>)>> {
    if let Some(path) = &args.trace {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the trace {}", path.display()))?;
        let requests =
            trace::parse(&text).with_context(|| format!("in the trace {}", path.display()))?;
        let name = path
            .file_stem()
            .map_or("trace".into(), |s| s.to_string_lossy().into_owned());
        return Ok(vec![(name, requests)]);
    }
    if let Some(n) = args.burst {
        anyhow::ensure!(n >= 1, "--burst must be at least 1");
        return Ok(vec![(
            format!("burst-{n}"),
            trace::burst(n, args.service, args.seed),
        )]);
    }
    let all = trace::generated(args.service, args.seed);
    let names: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
    let wanted = args.generate.as_deref().unwrap_or("all");
    let chosen: Vec<_> = all
        .into_iter()
        .filter(|(n, _)| wanted == "all" || *n == wanted)
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    anyhow::ensure!(
        !chosen.is_empty(),
        "no generated trace `{wanted}`; they are {} (or all)",
        names.join(", ")
    );
    Ok(chosen)
}
