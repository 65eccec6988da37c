//! What load to offer: the priority mix, and scenarios as a list of phases, each a
//! duration with an offered rate per priority.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// The three priority classes, indexable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High = 0,
    Medium = 1,
    Low = 2,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Medium, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "high" => Ok(Priority::High),
            "medium" => Ok(Priority::Medium),
            "low" => Ok(Priority::Low),
            _ => Err(format!("unknown priority {s:?} (high, medium or low)")),
        }
    }
}

/// Share of requests per priority, e.g. `high=10,medium=30,low=60` (any positive scale).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix(pub [f64; 3]);

impl Mix {
    /// The shares, normalised to sum to 1.
    pub fn shares(&self) -> [f64; 3] {
        let total: f64 = self.0.iter().sum();
        self.0.map(|w| w / total)
    }
}

impl Default for Mix {
    fn default() -> Self {
        Mix([10.0, 30.0, 60.0])
    }
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut weights = [0.0; 3];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not priority=weight"))?;
            let priority: Priority = name.trim().parse()?;
            let weight: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("weight {value:?} of {name} is not a number"))?;
            if !(weight.is_finite() && weight >= 0.0) {
                return Err(format!("weight of {name} must be zero or positive"));
            }
            weights[priority.index()] = weight;
        }
        if weights.iter().sum::<f64>() <= 0.0 {
            return Err(String::from("the mix needs at least one positive weight"));
        }
        Ok(Mix(weights))
    }
}

/// A stretch of time with a constant offered rate (requests/s) per priority.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    pub duration: Duration,
    pub rates: [f64; 3],
}

impl Phase {
    pub fn total_rate(&self) -> f64 {
        self.rates.iter().sum()
    }
}

/// The built-in scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// The mix at `--rate` for the whole duration.
    Steady,
    /// High and medium steady at their share of `--capacity`; low offered at 3x capacity.
    Overload,
    /// `--rate` with a 1 s burst of 5x every 5 s.
    Burst,
}

impl FromStr for Builtin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "steady" => Ok(Builtin::Steady),
            "overload" => Ok(Builtin::Overload),
            "burst" => Ok(Builtin::Burst),
            _ => Err(format!("unknown scenario {s:?}")),
        }
    }
}

/// Builds the phases of a built-in scenario.
pub fn builtin_phases(
    scenario: Builtin,
    rate: f64,
    capacity: Option<f64>,
    mix: Mix,
    duration: Duration,
) -> Result<Vec<Phase>, String> {
    let shares = mix.shares();
    let steady = |rate: f64, duration| Phase {
        duration,
        rates: shares.map(|s| s * rate),
    };
    Ok(match scenario {
        Builtin::Steady => vec![steady(rate, duration)],
        Builtin::Overload => {
            let capacity = capacity.ok_or("--scenario overload needs --capacity")?;
            let mut rates = shares.map(|s| s * capacity);
            rates[Priority::Low.index()] = 3.0 * capacity;
            vec![Phase { duration, rates }]
        }
        Builtin::Burst => {
            let mut phases = Vec::new();
            let mut left = duration;
            while !left.is_zero() {
                let calm = left.min(Duration::from_secs(4));
                phases.push(steady(rate, calm));
                left -= calm;
                let burst = left.min(Duration::from_secs(1));
                if !burst.is_zero() {
                    phases.push(steady(5.0 * rate, burst));
                    left -= burst;
                }
            }
            phases
        }
    })
}

/// A scenario file:
///
/// ```toml
/// [[phase]]
/// duration = "10s"
/// high = 100      # requests/s
/// medium = 300
/// low = 600
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    phase: Vec<PhaseFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PhaseFile {
    duration: String,
    #[serde(default)]
    high: f64,
    #[serde(default)]
    medium: f64,
    #[serde(default)]
    low: f64,
}

/// Parses a scenario file's text.
pub fn parse_scenario_file(text: &str) -> Result<Vec<Phase>, String> {
    let file: ScenarioFile = toml::from_str(text).map_err(|e| e.to_string())?;
    if file.phase.is_empty() {
        return Err(String::from("a scenario needs at least one [[phase]]"));
    }
    file.phase
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let duration = humantime::parse_duration(&p.duration)
                .map_err(|e| format!("phase {}: duration {:?}: {e}", i + 1, p.duration))?;
            let rates = [p.high, p.medium, p.low];
            if rates.iter().any(|r| !(r.is_finite() && *r >= 0.0)) {
                return Err(format!("phase {}: rates must be zero or positive", i + 1));
            }
            Ok(Phase { duration, rates })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_normalises() {
        let mix: Mix = "high=10, medium=30,low=60".parse().unwrap();
        assert_eq!(mix.shares(), [0.1, 0.3, 0.6]);
        let only_high: Mix = "high=1".parse().unwrap();
        assert_eq!(only_high.shares(), [1.0, 0.0, 0.0]);
        for bad in ["urgent=1", "high", "high=x", "high=0", "high=-1"] {
            assert!(bad.parse::<Mix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn overload_offers_low_at_three_times_capacity() {
        let phases = builtin_phases(
            Builtin::Overload,
            0.0,
            Some(1000.0),
            Mix([1.0, 1.0, 2.0]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(phases[0].rates, [250.0, 250.0, 3000.0]);
        assert!(
            builtin_phases(Builtin::Overload, 0.0, None, Mix::default(), Duration::ZERO).is_err()
        );
    }

    #[test]
    fn burst_alternates_calm_and_five_times_the_rate() {
        let phases = builtin_phases(
            Builtin::Burst,
            100.0,
            None,
            Mix([1.0, 0.0, 0.0]),
            Duration::from_secs(12),
        )
        .unwrap();
        let shape: Vec<(u64, f64)> = phases
            .iter()
            .map(|p| (p.duration.as_secs(), p.total_rate()))
            .collect();
        assert_eq!(
            shape,
            vec![(4, 100.0), (1, 500.0), (4, 100.0), (1, 500.0), (2, 100.0)]
        );
    }

    #[test]
    fn scenario_file_round_trip_and_errors() {
        let phases = parse_scenario_file(
            "[[phase]]\nduration = \"2s\"\nhigh = 5\n[[phase]]\nduration = \"1s\"\nlow = 7.5\n",
        )
        .unwrap();
        assert_eq!(phases.len(), 2);
        assert_eq!(phases[1].rates, [0.0, 0.0, 7.5]);
        assert!(parse_scenario_file("").is_err());
        assert!(parse_scenario_file("[[phase]]\nduration = \"soon\"\n").is_err());
        assert!(parse_scenario_file("[[phase]]\nduration = \"1s\"\nurgent = 1\n").is_err());
    }
}
