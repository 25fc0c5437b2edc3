//! The priority an event is published at. It travels in the subject, not a header, because a subject is what the
//! server can filter on: each class of a function has its own consumer, and the runtime chooses which to pull
//! from. Normal keeps the subject every existing publisher uses, so a publisher that knows nothing of priorities
//! publishes at normal.

use std::fmt;
use std::str::FromStr;

use crate::catalog::subject_for;

/// A priority class: high for real-time and critical events, normal by default, low for cleanup and bulk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Served first while a function has a backlog.
    High,
    /// The default: `events.<type>`, as every publisher that names no priority sends.
    #[default]
    Normal,
    /// Served when nothing higher waits, and never starved past the runtime's bound.
    Low,
}

impl Priority {
    /// Every class, highest first.
    pub const ALL: [Self; 3] = [Self::High, Self::Normal, Self::Low];

    /// The class's name, as the CLI flag and the subject's last token spell it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
        }
    }

    /// The subject an event of type `ty` is published on at this priority: `events.<type>` for normal,
    /// `events.<type>.high` and `events.<type>.low` for the others.
    pub fn subject(self, ty: &str) -> String {
        match self {
            Self::Normal => subject_for(ty),
            other => format!("{}.{}", subject_for(ty), other.as_str()),
        }
    }

    /// The priority a stored subject was published at, given its type's normal subject; `None` when the subject is
    /// not one of that type's.
    pub fn of_subject(subject: &str, ty: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|priority| priority.subject(ty) == subject)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a priority did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPriority(pub String);

impl fmt::Display for UnknownPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "priority: expected `high`, `normal` or `low`, got {:?}",
            self.0
        )
    }
}

impl std::error::Error for UnknownPriority {}

impl FromStr for Priority {
    type Err = UnknownPriority;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|priority| priority.as_str() == text)
            .ok_or_else(|| UnknownPriority(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_keeps_the_subject_every_publisher_uses() {
        assert_eq!(
            Priority::Normal.subject("users.registered"),
            "events.users.registered"
        );
        assert_eq!(
            Priority::High.subject("users.registered"),
            "events.users.registered.high"
        );
        assert_eq!(
            Priority::of_subject("events.users.registered.low", "users.registered"),
            Some(Priority::Low)
        );
        assert_eq!(
            Priority::of_subject("events.users.registered.x", "users.registered"),
            None
        );
        assert_eq!("high".parse(), Ok(Priority::High));
        assert_eq!(
            "urgent".parse::<Priority>().unwrap_err().to_string(),
            "priority: expected `high`, `normal` or `low`, got \"urgent\""
        );
    }

    /// A class's subject must never be another type's normal subject.
    #[test]
    fn no_catalog_type_ends_in_a_class_token() {
        for kind in crate::CATALOG {
            for class in ["high", "normal", "low"] {
                assert!(
                    !kind.ty.ends_with(&format!(".{class}")),
                    "{}: a type may not end in .{class}, the token of a priority class",
                    kind.ty
                );
            }
        }
    }
}
