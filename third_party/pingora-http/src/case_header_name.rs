// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::*;
use bytes::Bytes;
use http::header;

#[derive(Debug, Clone)]
pub struct CaseHeaderName(Bytes);

impl CaseHeaderName {
    pub fn new(name: String) -> Self {
        CaseHeaderName(name.into())
    }
}

impl CaseHeaderName {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(buf: &[u8]) -> Self {
        CaseHeaderName(Bytes::copy_from_slice(buf))
    }
}

/// A trait that converts into case-sensitive header names.
pub trait IntoCaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName;

    // MULTIVERSE PATCH: a name that is typed already (a `HeaderName`, a `StaticHeaderName`)
    // gives its `HeaderName` without being parsed again from its bytes, and without an
    // allocation for a name known at compile time. Others parse as before.
    /// The header's name and its case-preserved spelling.
    fn into_header_names(self) -> Result<(HeaderName, CaseHeaderName)>
    where
        Self: Sized,
    {
        let case_header_name = self.into_case_header_name();
        let header_name = HeaderName::from_bytes(case_header_name.as_slice())
            .or_err(InvalidHTTPHeader, "invalid header name")?;
        Ok((header_name, case_header_name))
    }
}

// MULTIVERSE PATCH: header names known at compile time.
/// A header name known at compile time, spelled as it goes on the wire (lower case, as
/// [`HeaderName::from_static`] requires). Inserting it neither parses the name nor allocates
/// for it: the `HeaderName` and its spelling are both static.
#[derive(Debug, Clone)]
pub struct StaticHeaderName {
    name: HeaderName,
    case: &'static str,
}

impl StaticHeaderName {
    /// Panics (at compile time in a `const` or `static`) when `name` is not a valid lower-case
    /// header name, as [`HeaderName::from_static`] does.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name: HeaderName::from_static(name),
            case: name,
        }
    }

    /// The name, for lookups in a header map without parsing.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }
}

impl IntoCaseHeaderName for &StaticHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(Bytes::from_static(self.case.as_bytes()))
    }

    fn into_header_names(self) -> Result<(HeaderName, CaseHeaderName)> {
        Ok((self.name.clone(), self.into_case_header_name()))
    }
}

impl IntoCaseHeaderName for CaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self
    }
}

impl IntoCaseHeaderName for String {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for &'static str {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(&self))
    }

    // MULTIVERSE PATCH: no second parse.
    fn into_header_names(self) -> Result<(HeaderName, CaseHeaderName)> {
        let case_header_name = CaseHeaderName(titled_header_name(&self));
        Ok((self, case_header_name))
    }
}

impl IntoCaseHeaderName for &HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(self))
    }

    // MULTIVERSE PATCH: no second parse.
    fn into_header_names(self) -> Result<(HeaderName, CaseHeaderName)> {
        Ok((self.clone(), CaseHeaderName(titled_header_name(self))))
    }
}

impl IntoCaseHeaderName for Bytes {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self)
    }
}

fn titled_header_name(header_name: &HeaderName) -> Bytes {
    titled_header_name_str(header_name).map_or_else(
        || Bytes::copy_from_slice(header_name.as_str().as_bytes()),
        |s| Bytes::from_static(s.as_bytes()),
    )
}

pub(crate) fn titled_header_name_str(header_name: &HeaderName) -> Option<&'static str> {
    Some(match *header_name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        // TODO: add more const header here to map to their titled case
        // TODO: automatically upper case the first letter?
        _ => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_case_header_name() {
        assert_eq!("FoO".into_case_header_name().as_slice(), b"FoO");
        assert_eq!("FoO".to_string().into_case_header_name().as_slice(), b"FoO");
        assert_eq!(header::SERVER.into_case_header_name().as_slice(), b"Server");
    }

    // MULTIVERSE PATCH: typed names give the same names as parsed ones.
    #[test]
    fn typed_names_need_no_parse() {
        static ID: StaticHeaderName = StaticHeaderName::new("x-request-id");
        let (name, case) = (&ID).into_header_names().unwrap();
        assert_eq!(name, "x-request-id");
        assert_eq!(case.as_slice(), b"x-request-id");
        let (name, case) = header::HOST.into_header_names().unwrap();
        assert_eq!((name, case.as_slice()), (header::HOST, &b"Host"[..]));
        let (name, case) = (&header::CONTENT_LENGTH).into_header_names().unwrap();
        assert_eq!(name, header::CONTENT_LENGTH);
        assert_eq!(case.as_slice(), b"Content-Length");
        let (name, case) = "X-Foo".into_header_names().unwrap();
        assert_eq!((name.as_str(), case.as_slice()), ("x-foo", &b"X-Foo"[..]));
        assert!("bad name".into_header_names().is_err());
    }
}
