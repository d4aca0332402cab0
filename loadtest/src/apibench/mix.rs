//! A busy morning's mix of API operations, and the target that runs them (the clinic API, or the
//! bare ceiling server doing the same database work).

use std::sync::Arc;
use std::time::Instant;

use super::ceiling::CeilingTarget;
use super::clinic::ClinicTarget;
use super::drive::Recorder;

/// One operation of the mix. Each is one request, except a sign-in (password, then the TOTP
/// code: two).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    SignIn,
    Session,
    PatientRead,
    PatientList,
    Intake,
    ScheduleDay,
    Slots,
    Book,
    CheckIn,
    Complete,
    Cancel,
    ImageList,
    ImageFetch,
    AuditRead,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::SignIn => "sign-in with MFA",
            Op::Session => "session check",
            Op::PatientRead => "patient read",
            Op::PatientList => "patient list",
            Op::Intake => "patient registration",
            Op::ScheduleDay => "schedule view (a day)",
            Op::Slots => "open slots (a week)",
            Op::Book => "booking",
            Op::CheckIn => "check-in",
            Op::Complete => "visit completed",
            Op::Cancel => "cancellation",
            Op::ImageList => "wound photo list",
            Op::ImageFetch => "wound photo fetch",
            Op::AuditRead => "audit log read",
        }
    }
}

/// The operations and their weights (percent of operations).
#[derive(Clone, Debug)]
pub struct Mix {
    pub weights: Vec<(Op, f64)>,
}

impl Default for Mix {
    /// Front desk and medical assistants at work: mostly reads of charts, schedules and photos;
    /// a booking, check-in or completion every few operations; sign-ins rare (each staff member
    /// signs in a few times a day) but present, with their deliberate argon2 cost.
    fn default() -> Self {
        Mix {
            weights: vec![
                (Op::PatientRead, 22.0),
                (Op::PatientList, 4.0),
                (Op::Intake, 2.0),
                (Op::ScheduleDay, 18.0),
                (Op::Slots, 7.0),
                (Op::Book, 6.0),
                (Op::CheckIn, 5.0),
                (Op::Complete, 5.0),
                (Op::Cancel, 1.0),
                (Op::ImageList, 10.0),
                (Op::ImageFetch, 12.0),
                (Op::AuditRead, 2.0),
                (Op::Session, 5.5),
                (Op::SignIn, 0.5),
            ],
        }
    }
}

impl Mix {
    fn total(&self) -> f64 {
        self.weights.iter().map(|w| w.1).sum()
    }

    /// The operation at `u` (0..1) of the cumulative weights.
    pub fn pick(&self, u: f64) -> Op {
        let mut at = u * self.total();
        for &(op, w) in &self.weights {
            if at < w {
                return op;
            }
            at -= w;
        }
        self.weights.last().map_or(Op::Session, |w| w.0)
    }

    /// Mean requests per operation.
    pub fn requests_per_op(&self) -> f64 {
        let t = self.total();
        if t <= 0.0 {
            return 1.0;
        }
        self.weights
            .iter()
            .map(|&(op, w)| w * if op == Op::SignIn { 2.0 } else { 1.0 })
            .sum::<f64>()
            / t
    }
}

/// xorshift64*: the operations' and entities' draws, seeded per level so a run repeats.
pub struct Draw(u64);

impl Draw {
    pub fn new(label: &str) -> Draw {
        let seed = label.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
        });
        Draw(seed | 1)
    }

    pub fn draw(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..1.
    pub fn unit(&mut self) -> f64 {
        (self.draw() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub enum Kind {
    Clinic(Box<ClinicTarget>),
    Ceiling(CeilingTarget),
}

/// What a level runs its operations against.
pub struct Target {
    pub name: String,
    pub mix: Mix,
    pub kind: Kind,
}

impl Target {
    /// Runs `op`; `pick` chooses the worker and the records; `due` is when it was scheduled.
    pub async fn run(self: &Arc<Self>, op: Op, pick: u64, due: Instant, rec: &Recorder) {
        match &self.kind {
            Kind::Clinic(c) => c.run(op, pick, due, rec).await,
            Kind::Ceiling(c) => c.run(op, pick, due, rec).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_drawn_by_weight() {
        let mix = Mix::default();
        assert!((mix.total() - 100.0).abs() < 1e-9);
        let mut d = Draw::new("t");
        let mut reads = 0;
        let n = 100_000;
        for _ in 0..n {
            if mix.pick(d.unit()) == Op::PatientRead {
                reads += 1;
            }
        }
        let share = reads as f64 / n as f64;
        assert!((0.21..0.23).contains(&share), "patient reads {share}");
        assert_eq!(mix.pick(0.0), Op::PatientRead);
        assert_eq!(mix.pick(0.999_999), Op::SignIn);
        assert!((mix.requests_per_op() - 1.005).abs() < 1e-9);
    }
}
