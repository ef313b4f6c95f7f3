//! Who is calling: a token's [`Role`] and the [`Caller`] a request was authenticated as.
//! Plain data, known to the database layer and the services alike; how a caller is
//! authenticated (tokens, the method table, the cache) is `auth`'s, and nothing here
//! depends on it.

use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Submitter,
    Reader,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Submitter => "submitter",
            Role::Reader => "reader",
            Role::Worker => "worker",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [Role::Admin, Role::Submitter, Role::Reader, Role::Worker]
            .into_iter()
            .find(|role| role.as_str() == text)
    }
}

/// The caller of a request that passed authentication; handlers find it in the
/// request's extensions (`Caller::of`, in `auth`).
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: Uuid,
    pub name: String,
    pub role: Role,
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn roles_read_back_as_written() {
        for role in [Role::Admin, Role::Submitter, Role::Reader, Role::Worker] {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("root"), None);
    }
}
