//! The command line: which groups, repetitions, rates and builds, and the load points they make.
use super::*;

pub struct Opts {
    pub quick: bool,
    pub reps: usize,
    pub sweep_reps: usize,
    pub secs: f64,
    pub out: PathBuf,
    pub profile: bool,
    pub rates: Vec<u32>,
    pub command: String,
    /// `taskset -c` list for the proxy (default 1; the load generator and backends use 0).
    pub proxy_cpu: String,
    /// A `shunt-under-test` built from an earlier revision: C′ and D′ run it beside C and D at
    /// every fixed-rate and saturation point, alternating which build goes first.
    pub before: Option<PathBuf>,
    /// The groups to run (`--only fixed,max,newconn,sweep`; default all).
    pub only: Vec<Group>,
    /// The protocols of the fixed-rate points (`--protos h1,h2c`; default both).
    pub protos: Vec<Proto>,
}

pub(crate) fn parse_opts() -> anyhow::Result<Opts> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let known = [
        "--quick",
        "--reps",
        "--sweep-reps",
        "--secs",
        "--out",
        "--rates",
        "--no-profile",
        "--command",
        "--proxy-cpu",
        "--before",
        "--only",
        "--protos",
    ];
    let mut i = 0;
    while i < args.len() {
        if !known.contains(&args[i].as_str()) {
            bail!(
                "unknown argument {:?}; usage: shunt-bench-matrix [--quick] [--reps N] \
                 [--sweep-reps N] [--secs S] [--out DIR] [--rates R,R,...] [--no-profile] \
                 [--proxy-cpu LIST] [--before SHUNT_UNDER_TEST] [--only GROUP,...] \
                 [--protos h1,h2c]",
                args[i]
            );
        }
        i += if matches!(args[i].as_str(), "--quick" | "--no-profile") {
            1
        } else {
            2
        };
    }
    let quick = args.iter().any(|a| a == "--quick");
    let reps = value("--reps")
        .map(str::parse)
        .transpose()?
        .unwrap_or(if quick { 1 } else { 5 });
    let rates = match value("--rates") {
        Some(r) => r
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<u32>, _>>()?,
        None if quick => vec![2500, 5000, 10_000, 20_000],
        None => vec![
            1000, 2000, 5000, 10_000, 15_000, 20_000, 30_000, 40_000, 60_000, 80_000,
        ],
    };
    const GROUPS: [(&str, Group); 4] = [
        ("fixed", Group::Fixed),
        ("max", Group::Max),
        ("newconn", Group::NewConn),
        ("sweep", Group::Sweep),
    ];
    const PROTOS: [(&str, Proto); 2] = [("h1", Proto::H1), ("h2c", Proto::H2c)];
    let only = named_list("--only", value("--only"), &GROUPS)?;
    let protos = named_list("--protos", value("--protos"), &PROTOS)?;
    Ok(Opts {
        only,
        protos,
        quick,
        reps,
        sweep_reps: value("--sweep-reps")
            .map(str::parse)
            .transpose()?
            .unwrap_or(reps),
        secs: value("--secs")
            .map(str::parse)
            .transpose()?
            .unwrap_or(if quick { 1.5 } else { 4.0 }),
        out: value("--out")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/bench")),
        profile: !args.iter().any(|a| a == "--no-profile"),
        rates,
        proxy_cpu: value("--proxy-cpu").unwrap_or("1").to_string(),
        before: value("--before").map(PathBuf::from),
        command: value("--command").map(str::to_string).unwrap_or_else(|| {
            std::iter::once("shunt-bench-matrix".to_string())
                .chain(args.iter().cloned())
                .collect::<Vec<_>>()
                .join(" ")
        }),
    })
}

/// The load points of the fixed-rate, saturation and new-connection groups.
pub(crate) fn points(o: &Opts) -> (Vec<Point>, Vec<Point>, Vec<Point>) {
    let shape = |proto, conns, rate, bytes, keepalive| Shape {
        tool: Tool::Oha,
        proto,
        conns,
        rate,
        bytes,
        keepalive,
        secs: o.secs,
    };
    let fixed = |proto, conns, bytes| Point {
        group: Group::Fixed,
        shape: shape(proto, conns, Some(1000), bytes, true),
    };
    let mut h2load = fixed(Proto::H2c, 16, KIB);
    h2load.shape.tool = Tool::H2load;
    let fixed_points = if o.quick {
        vec![
            fixed(Proto::H1, 1, KIB),
            fixed(Proto::H1, 16, KIB),
            fixed(Proto::H2c, 16, KIB),
            h2load,
            fixed(Proto::H1, 4, 64 * KIB),
        ]
    } else {
        let mut v = Vec::new();
        for proto in [Proto::H1, Proto::H2c] {
            for conns in [1, 4, 16] {
                v.push(fixed(proto, conns, KIB));
            }
        }
        v.push(h2load);
        v.push(fixed(Proto::H1, 4, 64 * KIB));
        v.push(fixed(Proto::H2c, 4, 64 * KIB));
        v
    };
    let fixed_points = fixed_points
        .into_iter()
        .filter(|p| o.protos.contains(&p.shape.proto))
        .collect();
    let max = vec![Point {
        group: Group::Max,
        shape: shape(Proto::H1, 16, None, KIB, true),
    }];
    let mut newconn = vec![Point {
        group: Group::NewConn,
        shape: shape(Proto::H1, 16, None, KIB, false),
    }];
    if !o.quick {
        newconn.push(Point {
            group: Group::NewConn,
            shape: shape(Proto::H1, 16, Some(1000), KIB, false),
        });
    }
    (fixed_points, max, newconn)
}

/// A comma-separated list of `names` (all of them when the flag is absent).
fn named_list<T: Copy>(
    flag: &str,
    list: Option<&str>,
    names: &[(&str, T)],
) -> anyhow::Result<Vec<T>> {
    let Some(list) = list else {
        return Ok(names.iter().map(|(_, v)| *v).collect());
    };
    list.split(',')
        .map(|item| match names.iter().find(|(n, _)| *n == item) {
            Some((_, v)) => Ok(*v),
            None => {
                let known: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
                bail!("{flag} {item}: one of {}", known.join(", "))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_lists_take_the_names_given_all_when_absent_and_refuse_others() {
        let names = [("h1", Proto::H1), ("h2c", Proto::H2c)];
        assert_eq!(
            named_list("--protos", Some("h2c"), &names).unwrap(),
            [Proto::H2c]
        );
        assert_eq!(
            named_list("--protos", None, &names).unwrap(),
            [Proto::H1, Proto::H2c]
        );
        let err = named_list("--protos", Some("h1,h3"), &names).unwrap_err();
        assert_eq!(err.to_string(), "--protos h3: one of h1, h2c");
    }
}
