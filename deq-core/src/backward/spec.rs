//! The text form of a [`BackwardMode`]: `name[:key=value,...]`.
//!
//! `implicit`, `implicit:solver=anderson,max_iter=30,tol=1e-6`, `shine`,
//! `shine:fallback=1.8`, `shine:refine=5`, `jfb`, `jfb:refine=2`, `phantom:k=5,tau=0.5`,
//! `unrolled`. `implicit` accepts `solver` = `broyden` | `anderson` | `fixed_point` and
//! `memory`; defaults are those of [`BackwardMode::implicit`].
use std::fmt;
use std::str::FromStr;

use super::BackwardMode;
use crate::solver::SolverKind;

/// Why a backward-mode string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid backward mode `{text}`: {reason}")]
pub struct ParseModeError {
    /// The full text given.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for BackwardMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Implicit {
                solver,
                max_iter,
                tol,
            } => {
                write!(f, "implicit:solver={},", solver.name())?;
                match solver {
                    SolverKind::Broyden { memory, .. } | SolverKind::Anderson { memory, .. } => {
                        write!(f, "memory={memory},")?
                    }
                    SolverKind::FixedPoint { .. } => {}
                }
                write!(f, "max_iter={max_iter},tol={tol:e}")
            }
            Self::Shine { fallback, refine } => {
                let mut parts = Vec::new();
                if let Some(tau) = fallback {
                    parts.push(format!("fallback={tau}"));
                }
                if *refine > 0 {
                    parts.push(format!("refine={refine}"));
                }
                if parts.is_empty() {
                    write!(f, "shine")
                } else {
                    write!(f, "shine:{}", parts.join(","))
                }
            }
            Self::JacobianFree { refine: 0 } => write!(f, "jfb"),
            Self::JacobianFree { refine } => write!(f, "jfb:refine={refine}"),
            Self::Phantom { k, tau } => write!(f, "phantom:k={k},tau={tau}"),
            Self::Unrolled => write!(f, "unrolled"),
        }
    }
}

impl FromStr for BackwardMode {
    type Err = ParseModeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fail = |reason: String| ParseModeError {
            text: text.to_string(),
            reason,
        };
        let (name, rest) = text.trim().split_once(':').unwrap_or((text.trim(), ""));
        let mut pairs = Vec::new();
        for item in rest.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| fail(format!("`{item}` is not key=value")))?;
            pairs.push((key.trim(), value.trim()));
        }
        let allowed: &[&str] = match name {
            "implicit" => &["solver", "memory", "max_iter", "tol"],
            "shine" => &["fallback", "refine"],
            "jfb" | "jacobian_free" => &["refine"],
            "phantom" => &["k", "tau"],
            "unrolled" => &[],
            other => {
                return Err(fail(format!(
                    "unknown mode `{other}` (expected implicit, shine, jfb, phantom or unrolled)"
                )));
            }
        };
        if let Some((key, _)) = pairs.iter().find(|(k, _)| !allowed.contains(k)) {
            return Err(fail(format!(
                "`{name}` has no setting `{key}` (allowed: {})",
                allowed.join(", ")
            )));
        }
        let get = |key: &str| pairs.iter().rev().find(|(k, _)| *k == key).map(|(_, v)| *v);
        let number = |key: &str| -> Result<Option<f64>, ParseModeError> {
            get(key)
                .map(|v| {
                    v.parse::<f64>()
                        .map_err(|_| fail(format!("`{key}` = `{v}` is not a number")))
                })
                .transpose()
        };
        let count = |key: &str| -> Result<Option<usize>, ParseModeError> {
            get(key)
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| fail(format!("`{key}` = `{v}` is not a whole number ≥ 0")))
                })
                .transpose()
        };
        Ok(match name {
            "implicit" => {
                let memory = count("memory")?.unwrap_or(30);
                let solver = match get("solver").unwrap_or("broyden") {
                    "broyden" => SolverKind::broyden(memory),
                    "anderson" => SolverKind::anderson(memory),
                    "fixed_point" => SolverKind::fixed_point(),
                    other => {
                        return Err(fail(format!(
                            "unknown adjoint solver `{other}` (broyden, anderson, fixed_point)"
                        )));
                    }
                };
                Self::Implicit {
                    solver,
                    max_iter: count("max_iter")?.unwrap_or(30),
                    tol: number("tol")?.unwrap_or(1e-6),
                }
            }
            "shine" => Self::Shine {
                fallback: number("fallback")?,
                refine: count("refine")?.unwrap_or(0),
            },
            "jfb" | "jacobian_free" => Self::JacobianFree {
                refine: count("refine")?.unwrap_or(0),
            },
            "phantom" => Self::Phantom {
                k: count("k")?.unwrap_or(5),
                tau: number("tau")?.unwrap_or(0.5),
            },
            _ => Self::Unrolled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for text in [
            "shine",
            "shine:fallback=1.8",
            "shine:refine=5",
            "shine:fallback=1.8,refine=2",
            "jfb",
            "jfb:refine=3",
            "phantom:k=5,tau=0.5",
            "unrolled",
            "implicit:solver=anderson,memory=5,max_iter=40,tol=1e-7",
            "implicit:solver=fixed_point,max_iter=30,tol=1e-6",
        ] {
            let mode: BackwardMode = text.parse().unwrap();
            assert_eq!(
                mode.to_string().parse::<BackwardMode>().unwrap(),
                mode,
                "{text}"
            );
        }
        assert_eq!(
            "implicit".parse::<BackwardMode>().unwrap(),
            BackwardMode::implicit()
        );
        assert_eq!(
            "shine:refine=5".parse::<BackwardMode>().unwrap(),
            BackwardMode::Shine {
                fallback: None,
                refine: 5
            }
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let err = "shone".parse::<BackwardMode>().unwrap_err();
        assert!(err.reason.contains("unknown mode `shone`"), "{err}");
        let err = "shine:refine=x".parse::<BackwardMode>().unwrap_err();
        assert!(err.reason.contains("`refine` = `x`"), "{err}");
        let err = "phantom:k=2,alpha=3".parse::<BackwardMode>().unwrap_err();
        assert!(err.reason.contains("no setting `alpha`"), "{err}");
        let err = "jfb:refine".parse::<BackwardMode>().unwrap_err();
        assert!(err.reason.contains("not key=value"), "{err}");
    }
}
