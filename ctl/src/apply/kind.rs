//! The kinds of resource `skiff apply` manages, in the order they are applied: each may name
//! only kinds before it (a topic its dead-letter queue, a rule its task definition, a
//! service its queue), so creating in this order never meets a missing reference, and
//! pruning in the reverse order never deletes what something still names.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Role,
    Queue,
    Topic,
    Subscription,
    TaskDefinition,
    Source,
    Rule,
    Schedule,
    Service,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Role,
        Kind::Queue,
        Kind::Topic,
        Kind::Subscription,
        Kind::TaskDefinition,
        Kind::Source,
        Kind::Rule,
        Kind::Schedule,
        Kind::Service,
    ];

    /// The document key and the apply set's name for the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Role => "role",
            Kind::Queue => "queue",
            Kind::Topic => "topic",
            Kind::Subscription => "subscription",
            Kind::TaskDefinition => "task_definition",
            Kind::Source => "source",
            Kind::Rule => "rule",
            Kind::Schedule => "schedule",
            Kind::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
