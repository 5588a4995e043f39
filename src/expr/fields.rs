//! The fields of the variables expressions read: one enum per variable, the single source of
//! their names, and [`Uses`], the set of fields an expression reads.

/// Declares a field enum with its names, in bit order.
macro_rules! fields {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum $name {
            $($variant),+
        }

        impl $name {
            /// Every field, in bit order.
            pub(crate) const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The name expressions use.
            pub(crate) const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            /// The field called `name`.
            pub(crate) fn parse(name: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|f| f.name() == name)
            }

            /// Every name, for messages.
            #[allow(dead_code, reason = "generated for every field set; not every set is named in a message")]
            pub(crate) fn names() -> String {
                Self::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
            }

            /// Its bit in [`Uses`].
            #[allow(dead_code, reason = "generated for every field set; not every set is tracked in `Uses`")]
            pub(crate) const fn bit(self) -> u16 {
                1 << (self as u16)
            }
        }
    };
}

fields!(
    /// The fields of `request`.
    RequestField {
        Id => "id",
        Method => "method",
        Scheme => "scheme",
        Host => "host",
        Authority => "authority",
        Path => "path",
        RawQuery => "raw_query",
        Query => "query",
        Headers => "headers",
        Captures => "captures",
        Peer => "peer",
    }
);

fields!(
    /// The fields of `subject`; a principal under `subject.principals` has all but `principals`.
    SubjectField {
        Id => "id",
        Roles => "roles",
        Attr => "attr",
        Mechanism => "mechanism",
        Principals => "principals",
    }
);

fields!(
    /// The fields of `error`.
    ErrorField {
        Kind => "kind",
        Message => "message",
        Mechanism => "mechanism",
    }
);

fields!(
    /// The fields of `response`: the answer of an outbound call, in the expressions of the
    /// mechanisms that make one (`http` contextualizer, `remote` authorizer).
    ResponseField {
        Status => "status",
        Headers => "headers",
        Body => "body",
    }
);

fields!(
    /// The fields of `request.peer`.
    PeerField {
        Address => "address",
        Principal => "principal",
    }
);

/// The variables an expression may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Variable {
    Request,
    Subject,
    Error,
    Response,
}

impl Variable {
    pub(crate) const ALL: [Self; 4] = [Self::Request, Self::Subject, Self::Error, Self::Response];

    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Subject => "subject",
            Self::Error => "error",
            Self::Response => "response",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// Which fields of `request` and `subject` expressions read, and whether they read `error`,
/// found at load time: it refuses unknown fields and tells the rule compiler which steps may
/// use which variable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    request: u16,
    subject: u16,
    error: bool,
    response: bool,
}

impl Uses {
    /// Whether `request.<field>` is read.
    #[cfg(test)]
    pub(crate) fn reads_request(self, field: RequestField) -> bool {
        self.request & field.bit() != 0
    }

    /// Whether `subject.<field>` is read.
    #[cfg(test)]
    pub(crate) fn reads_subject_field(self, field: SubjectField) -> bool {
        self.subject & field.bit() != 0
    }

    /// Every field of every variable.
    #[cfg(test)]
    pub(crate) const ALL: Self = Self {
        request: u16::MAX,
        subject: u16::MAX,
        error: true,
        response: true,
    };

    /// The fields either of `self` and `other` reads.
    #[must_use]
    pub fn union(self, other: Self) -> Self {
        Self {
            request: self.request | other.request,
            subject: self.subject | other.subject,
            error: self.error || other.error,
            response: self.response || other.response,
        }
    }

    /// Whether `subject` is read at all.
    pub fn reads_subject(self) -> bool {
        self.subject != 0
    }

    /// Whether `error` is read.
    pub fn reads_error(self) -> bool {
        self.error
    }

    /// Whether `response` is read.
    pub fn reads_response(self) -> bool {
        self.response
    }

    /// Whether `request` is read at all.
    pub fn any_request(self) -> bool {
        self.request != 0
    }

    pub(super) fn add_request(&mut self, field: RequestField) {
        self.request |= field.bit();
    }

    pub(super) fn add_subject(&mut self, field: SubjectField) {
        self.subject |= field.bit();
    }

    /// A use of the whole variable: every field of it.
    pub(super) fn add_all(&mut self, variable: Variable) {
        match variable {
            Variable::Request => self.request = u16::MAX,
            Variable::Subject => self.subject = u16::MAX,
            Variable::Error => self.error = true,
            Variable::Response => self.response = true,
        }
    }

    pub(super) fn add_error(&mut self) {
        self.error = true;
    }

    pub(super) fn add_response(&mut self) {
        self.response = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bits_are_distinct() {
        for field in RequestField::ALL {
            assert_eq!(RequestField::parse(field.name()), Some(*field));
        }
        for field in SubjectField::ALL {
            assert_eq!(SubjectField::parse(field.name()), Some(*field));
        }
        for field in ErrorField::ALL {
            assert_eq!(ErrorField::parse(field.name()), Some(*field));
        }
        let bits = RequestField::ALL.iter().fold(0u16, |acc, f| {
            assert_eq!(acc & f.bit(), 0, "{f:?}");
            acc | f.bit()
        });
        assert_eq!(bits.count_ones() as usize, RequestField::ALL.len());
        assert_eq!(RequestField::parse("metod"), None);
        assert_eq!(
            SubjectField::names(),
            "id, roles, attr, mechanism, principals"
        );
    }
}
