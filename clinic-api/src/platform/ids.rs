//! Identifier newtypes, parsed at the edge: a value of one of these types is a well-formed UUID
//! (or came from our own database), so the inside never re-checks.

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh random id.
            pub fn new() -> Self {
                Self(uuid::Uuid::new_v4().to_string())
            }
            /// Parses caller input: a UUID in its canonical hyphenated form.
            pub fn parse(s: &str) -> Option<Self> {
                let u = uuid::Uuid::parse_str(s).ok()?;
                Some(Self(u.hyphenated().to_string()))
            }
            /// Wraps a value read from our own storage.
            pub fn from_trusted(s: String) -> Self {
                Self(s)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| serde::de::Error::custom(concat!("invalid ", stringify!($name))))
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "format": "uuid" })
            }
        }
    };
}

id_type!(
    /// A tenant: one practice.
    ClinicId
);
id_type!(
    /// A practice location.
    LocationId
);
id_type!(
    /// A user account (staff, patient or referring partner).
    UserId
);
id_type!(
    /// A patient record.
    PatientId
);
id_type!(
    /// A login session.
    SessionId
);
id_type!(
    /// Any other record named in a path or body (appointments, appointment types, rooms,
    /// availability blocks): a UUID, checked on the way in.
    RecordId
);
