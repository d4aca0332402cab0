//! Scenarios: a TOML file, or one of the built-ins (`clinic-morning`, `clinic-morning-ci`).
//! Every scenario is bounded: at most [`MAX_CONSULTS`] consults, [`MAX_SECONDS`] seconds in all
//! and [`MAX_UPLOADS`] uploads per phase.

use anyhow::{Context, bail};
use serde::Deserialize;

pub const MAX_CONSULTS: u32 = 400;
pub const MAX_SECONDS: f64 = 1800.0;
pub const MAX_UPLOADS: u32 = 200;
pub const MAX_RATE_PER_MIN: f64 = 6000.0;

const BUILT_IN: &[(&str, &str)] = &[
    (
        "clinic-morning",
        include_str!("../scenarios/clinic-morning.toml"),
    ),
    (
        "clinic-morning-ci",
        include_str!("../scenarios/clinic-morning-ci.toml"),
    ),
];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// A peer with no remote media after this long counts as a `media_timeout` error.
    #[serde(default = "default_join_timeout")]
    pub join_timeout_s: f64,
    #[serde(default)]
    pub media: Media,
    #[serde(default)]
    pub api: Api,
    pub phases: Vec<Phase>,
}

fn default_join_timeout() -> f64 {
    20.0
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Media {
    pub audio_pps: u32,
    pub audio_bytes: usize,
    pub keyframe_interval_s: f64,
    pub keyframe_factor: u32,
    pub video_layers: Vec<Layer>,
}

impl Default for Media {
    fn default() -> Self {
        Self {
            audio_pps: 50,
            audio_bytes: 80,
            keyframe_interval_s: 3.0,
            keyframe_factor: 4,
            video_layers: vec![
                Layer::new("l", 15, 150),
                Layer::new("m", 30, 500),
                Layer::new("h", 30, 1200),
            ],
        }
    }
}

impl Media {
    /// RTP packets per second one publisher sends (audio plus every layer).
    pub fn packets_per_s(&self) -> f64 {
        let video: f64 = self
            .video_layers
            .iter()
            .map(|l| {
                let frame = l.kbps as f64 * 125.0 / l.fps.max(1) as f64;
                (frame / 1096.0).ceil() * l.fps as f64
            })
            .sum();
        self.audio_pps as f64 + video
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    pub rid: String,
    pub fps: u32,
    pub kbps: u32,
}

impl Layer {
    fn new(rid: &str, fps: u32, kbps: u32) -> Self {
        Self {
            rid: rid.into(),
            fps,
            kbps,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Api {
    pub photo_width: u32,
    pub photo_height: u32,
}

impl Default for Api {
    fn default() -> Self {
        Self {
            photo_width: 3000,
            photo_height: 2000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    /// Consults live by the end of the ramp (started or ended evenly over `ramp_s`).
    pub consults: u32,
    #[serde(default)]
    pub ramp_s: f64,
    pub hold_s: f64,
    /// Front-desk intake: a new patient registered and read back.
    #[serde(default)]
    pub intake_per_min: f64,
    /// Front-desk bookings: open slots looked up, one booked.
    #[serde(default)]
    pub bookings_per_min: f64,
    /// Wound photos uploaded at once at the start of the phase.
    #[serde(default)]
    pub uploads: u32,
}

impl Scenario {
    /// A built-in name or a path to a TOML file.
    pub fn load(name_or_path: &str) -> anyhow::Result<Scenario> {
        let text = match BUILT_IN.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, t)) => (*t).to_string(),
            None => std::fs::read_to_string(name_or_path).with_context(|| {
                format!(
                    "{name_or_path} is neither a built-in scenario ({}) nor a readable file",
                    BUILT_IN.iter().map(|b| b.0).collect::<Vec<_>>().join(", ")
                )
            })?,
        };
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let s: Scenario = toml::from_str(text).context("scenario TOML")?;
        s.check()?;
        Ok(s)
    }

    pub fn duration_s(&self) -> f64 {
        self.phases.iter().map(|p| p.ramp_s + p.hold_s).sum()
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.phases.is_empty() {
            bail!("a scenario needs at least one phase");
        }
        for p in &self.phases {
            if p.consults > MAX_CONSULTS {
                bail!("phase {}: at most {MAX_CONSULTS} consults", p.name);
            }
            if p.uploads > MAX_UPLOADS {
                bail!("phase {}: at most {MAX_UPLOADS} uploads", p.name);
            }
            let times = [p.ramp_s, p.hold_s];
            if times.iter().any(|t| !t.is_finite() || *t < 0.0) || p.hold_s <= 0.0 {
                bail!("phase {}: ramp_s ≥ 0 and hold_s > 0 seconds", p.name);
            }
            let rates = [p.intake_per_min, p.bookings_per_min];
            if rates
                .iter()
                .any(|r| !r.is_finite() || *r < 0.0 || *r > MAX_RATE_PER_MIN)
            {
                bail!(
                    "phase {}: rates are 0..={MAX_RATE_PER_MIN} per minute",
                    p.name
                );
            }
        }
        if self.duration_s() > MAX_SECONDS {
            bail!("a scenario lasts at most {MAX_SECONDS} s");
        }
        let m = &self.media;
        if !(1..=200).contains(&m.audio_pps)
            || !(20..=1000).contains(&m.audio_bytes)
            || m.video_layers.len() > 3
            || m.video_layers.iter().any(|l| {
                !(1..=60).contains(&l.fps)
                    || !(10..=8000).contains(&l.kbps)
                    || !["l", "m", "h", "q", "f"].contains(&l.rid.as_str())
            })
            || !(0.2..=60.0).contains(&m.keyframe_interval_s)
            || !(1..=20).contains(&m.keyframe_factor)
        {
            bail!(
                "media: audio_pps 1–200, audio_bytes 20–1000, at most 3 video layers (rid l, m, h, q or f; 1–60 fps; 10–8000 kbps), keyframe_interval_s 0.2–60, keyframe_factor 1–20"
            );
        }
        if !(0.5..=120.0).contains(&self.join_timeout_s) {
            bail!("join_timeout_s is 0.5–120");
        }
        let (w, h) = (self.api.photo_width, self.api.photo_height);
        if !(16..=8000).contains(&w) || !(16..=8000).contains(&h) {
            bail!("api: photo sides are 16–8000 px");
        }
        Ok(())
    }

    /// The capacity search as a scenario: media only, `from` consults, then `step` more every
    /// `step_s` seconds up to `max`.
    pub fn capacity(from: u32, step: u32, max: u32, step_s: f64) -> Scenario {
        let mut phases = Vec::new();
        let mut n = from.max(1);
        while n <= max.min(MAX_CONSULTS) {
            phases.push(Phase {
                name: format!("{n} consults"),
                consults: n,
                ramp_s: 2.0,
                hold_s: step_s,
                intake_per_min: 0.0,
                bookings_per_min: 0.0,
                uploads: 0,
            });
            n += step.max(1);
        }
        Scenario {
            name: "capacity".into(),
            description: "consults ramped until SFU-added p99 latency or loss passes its limit"
                .into(),
            join_timeout_s: 20.0,
            // The same simulcast media as clinic-morning. Each target forwards the layer it
            // chooses: the relay the top one by rule, Janus the one its subscribers ask for (the
            // top), our SFU the highest that fits its bandwidth estimate. Forwarded packets/s
            // are counted as received, whatever the layer.
            media: Media::default(),
            api: Api::default(),
            phases,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_ins_load_and_are_bounded() {
        for (name, _) in BUILT_IN {
            let s = Scenario::load(name).unwrap();
            assert_eq!(&s.name, name);
            assert!(s.duration_s() <= MAX_SECONDS);
        }
        let m = Scenario::load("clinic-morning").unwrap();
        assert_eq!(m.phases.iter().map(|p| p.consults).max(), Some(12));
        assert_eq!(m.media.audio_pps, 50);
        assert_eq!(m.media.video_layers.len(), 3);
    }

    #[test]
    fn bad_scenarios_are_refused_with_a_reason() {
        let base = "name = \"x\"\n[[phases]]\nname = \"p\"\nhold_s = 5\n";
        assert!(Scenario::parse(&format!("{base}consults = 2\n")).is_ok());
        for (extra, want) in [
            ("consults = 100000\n", "at most"),
            ("consults = 1\nuploads = 100000\n", "uploads"),
            ("consults = 1\nintake_per_min = -1\n", "rates"),
            ("consults = 1\nbogus = 1\n", "TOML"),
        ] {
            let err = Scenario::parse(&format!("{base}{extra}")).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{extra}: {err:#}");
        }
        assert!(Scenario::parse("name = \"x\"\nphases = []\n").is_err());
        let long = "name = \"x\"\n[[phases]]\nname = \"p\"\nconsults = 1\nhold_s = 5000\n";
        assert!(Scenario::parse(long).is_err());
        assert!(Scenario::load("/no/such/file.toml").is_err());
    }

    #[test]
    fn capacity_steps_up_to_the_limit() {
        let s = Scenario::capacity(2, 4, 14, 10.0);
        let levels: Vec<u32> = s.phases.iter().map(|p| p.consults).collect();
        assert_eq!(levels, vec![2, 6, 10, 14]);
    }
}
