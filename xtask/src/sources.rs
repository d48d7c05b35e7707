//! The host's apt sources → the rig's private apt configuration.
//!
//! Hosts behind a local mirror or proxy need the one they already use, so no mirror is
//! named here: the host's `/etc/apt/sources.list` and `sources.list.d/*.{list,sources}`
//! are copied as they are, and the one thing the rig adds is the backports suite (where
//! QEMU 10.0 comes from), built from the host's own entry for its release, when the host
//! does not list backports already.
//!
//! Tested: Debian 12 (bookworm) with QEMU 10.0 from bookworm-backports. Elsewhere
//! (Ubuntu, a Debian with no entry for its own release) nothing is added, no backports
//! target is used, and the packages are whatever the host's own sources offer.
//!
//! Everything but [`read_host`] and [`read_os_release`] works on file contents, so the
//! parsing is unit-tested without touching `/etc`.

use anyhow::{Context, Result};
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

/// What the rig is tested on, for the notes printed elsewhere.
const TESTED: &str =
    "the rig is tested on Debian 12 (bookworm) with QEMU 10.0 from bookworm-backports";
const TESTED_CODENAME: &str = "bookworm";

/// The base name of the one file the rig adds to the private `sources.list.d`.
const ADDED: &str = "qsnap-backports";

/// The host's apt sources, as read.
#[derive(Clone, Debug, Default)]
pub(crate) struct HostSources {
    /// `/etc/apt/sources.list` (one-line format); empty when there is none.
    pub(crate) list: String,
    /// The `sources.list.d` files apt reads, as (file name, contents), in apt's order.
    pub(crate) parts: Vec<(String, String)>,
}

/// The distribution, from os-release.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct OsRelease {
    /// `ID`, e.g. `debian`, `ubuntu`.
    pub(crate) id: String,
    /// `VERSION_CODENAME`, e.g. `bookworm`; empty when not given.
    pub(crate) codename: String,
}

/// The private configuration to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Private {
    /// The private `Dir::Etc::SourceList`: the host's `sources.list`, verbatim.
    pub(crate) list: String,
    /// The private `Dir::Etc::SourceParts`: the host's files plus the added one.
    pub(crate) parts: Vec<(String, String)>,
    /// The `-t` target for installs (`<codename>-backports`), when the host lists it or
    /// it was added.
    pub(crate) backports: Option<String>,
    /// Something to tell the user: the host is not what the rig was tested on.
    pub(crate) note: Option<String>,
}

impl Private {
    /// Everything apt will read, as one text: when it changes, the lists are stale.
    pub(crate) fn fingerprint(&self) -> String {
        let mut text = format!("== sources.list\n{}", self.list);
        for (name, contents) in &self.parts {
            text.push_str(&format!("\n== sources.list.d/{name}\n{contents}"));
        }
        text
    }
}

/// Reads `etc_apt/sources.list` and the `sources.list.d` files apt would read.
pub(crate) fn read_host(etc_apt: &Path) -> Result<HostSources> {
    let list_path = etc_apt.join("sources.list");
    let list = match fs::read_to_string(&list_path) {
        Ok(text) => text,
        // deb822-only hosts (Debian 12 containers, Ubuntu 24.04) have no sources.list.
        Err(e) if e.kind() == ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read {}; make it readable", list_path.display()));
        }
    };
    let dir = etc_apt.join("sources.list.d");
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Ok(HostSources {
                list,
                parts: vec![],
            });
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot list {}; make it readable", dir.display()));
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| apt_reads(name))
        .collect();
    // apt reads the directory in sorted order; the order is the order of preference.
    names.sort();
    let mut parts = Vec::new();
    for name in names {
        let path = dir.join(&name);
        if !path.is_file() {
            continue;
        }
        let contents = fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}; make it readable", path.display()))?;
        parts.push((name, contents));
    }
    Ok(HostSources { list, parts })
}

/// `/etc/os-release`, or `/usr/lib/os-release` where `/etc` has none (os-release(5)).
pub(crate) fn read_os_release() -> Result<OsRelease> {
    let text = fs::read_to_string("/etc/os-release")
        .or_else(|_| fs::read_to_string("/usr/lib/os-release"))
        .context(
            "cannot read /etc/os-release or /usr/lib/os-release, which say the distribution \
             and release to take the backports suite from",
        )?;
    Ok(parse_os_release(&text))
}

/// True for the names apt reads in `sources.list.d` (sources.list(5)); others (e.g.
/// `*.disabled`, `*.dpkg-old`) are ignored by apt and so by the rig.
fn apt_reads(name: &str) -> bool {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    valid_chars && (name.ends_with(".list") || name.ends_with(".sources"))
}

/// `ID` and `VERSION_CODENAME` from os-release contents.
pub(crate) fn parse_os_release(text: &str) -> OsRelease {
    let mut os = OsRelease::default();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else {
            continue;
        };
        let value = value
            .trim()
            .trim_matches(|c| c == '"' || c == '\'')
            .to_owned();
        match key {
            "ID" => os.id = value,
            "VERSION_CODENAME" => os.codename = value,
            _ => {}
        }
    }
    os
}

/// One `deb` line of the one-line format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OneLine {
    /// What is between `[` and `]`, trimmed; empty when there are no options.
    pub(crate) options: String,
    pub(crate) uri: String,
    pub(crate) suite: String,
    pub(crate) components: Vec<String>,
}

/// The enabled `deb` entries of a one-line file (`deb-src` and comments skipped).
pub(crate) fn parse_one_line(text: &str) -> Vec<OneLine> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<OneLine> {
    // A `#` anywhere starts a comment (sources.list(5)).
    let line = line.split('#').next()?.trim();
    let (kind, rest) = line.split_once(char::is_whitespace)?;
    if kind != "deb" {
        return None;
    }
    let rest = rest.trim_start();
    let (options, rest) = match rest.strip_prefix('[') {
        Some(after) => {
            let (inner, rest) = after.split_once(']')?;
            (inner.trim().to_owned(), rest)
        }
        None => (String::new(), rest),
    };
    let mut words = rest.split_whitespace().map(str::to_owned);
    Some(OneLine {
        options,
        uri: words.next()?,
        suite: words.next()?,
        components: words.collect(),
    })
}

impl OneLine {
    /// The `signed-by=` option's value.
    fn signed_by(&self) -> Option<&str> {
        self.options
            .split_whitespace()
            .find_map(|o| o.strip_prefix("signed-by="))
    }

    /// This line with another suite, options and all.
    fn with_suite(&self, suite: &str) -> String {
        let options = if self.options.is_empty() {
            String::new()
        } else {
            format!("[{}] ", self.options)
        };
        format!(
            "deb {options}{} {suite} {}\n",
            self.uri,
            self.components.join(" ")
        )
    }
}

/// One field of a deb822 stanza, kept as written so it can be copied verbatim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Field {
    pub(crate) name: String,
    /// The value on the field's own line, trimmed.
    pub(crate) first: String,
    /// Continuation lines, verbatim (leading space kept): an inline `Signed-By` key.
    pub(crate) more: Vec<String>,
}

/// One deb822 stanza.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stanza {
    pub(crate) fields: Vec<Field>,
}

/// The enabled stanzas of a `.sources` file whose `Types` include `deb`.
pub(crate) fn parse_deb822(text: &str) -> Vec<Stanza> {
    let mut stanzas = Vec::new();
    let mut fields: Vec<Field> = Vec::new();
    for line in text.lines() {
        // Comments are whole lines starting with `#`, also inside a stanza (sources.list(5)).
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !fields.is_empty() {
                stanzas.push(Stanza {
                    fields: std::mem::take(&mut fields),
                });
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some(field) = fields.last_mut() {
                field.more.push(line.to_owned());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push(Field {
                name: name.trim().to_owned(),
                first: value.trim().to_owned(),
                more: vec![],
            });
        }
    }
    if !fields.is_empty() {
        stanzas.push(Stanza { fields });
    }
    stanzas.retain(|s| s.enabled() && s.words("Types").contains(&"deb"));
    stanzas
}

impl Stanza {
    fn field(&self, name: &str) -> Option<&Field> {
        // Field names are case-insensitive in deb822.
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    /// A field's whitespace-separated values (they may span lines).
    pub(crate) fn words(&self, name: &str) -> Vec<&str> {
        self.field(name)
            .map(|f| {
                std::iter::once(f.first.as_str())
                    .chain(f.more.iter().map(String::as_str))
                    .flat_map(str::split_whitespace)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn enabled(&self) -> bool {
        self.field("Enabled").is_none_or(|f| {
            !matches!(
                f.first.to_ascii_lowercase().as_str(),
                "no" | "false" | "0" | "off"
            )
        })
    }

    /// The `Signed-By` value: a keyring path, fingerprints, or an inline key's first line.
    fn signed_by(&self) -> Option<String> {
        self.field("Signed-By").map(|f| {
            std::iter::once(f.first.as_str())
                .chain(f.more.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// This stanza with only `deb` and another suite; every other field (URIs,
    /// Components, Signed-By with an inline key, Architectures, ...) copied verbatim.
    fn with_suite(&self, suite: &str) -> String {
        let mut text = String::new();
        for field in &self.fields {
            let name = field.name.to_ascii_lowercase();
            let first = match name.as_str() {
                "types" => "deb",
                "suites" => suite,
                "enabled" => continue,
                _ => field.first.as_str(),
            };
            if first.is_empty() {
                text.push_str(&format!("{}:\n", field.name));
            } else {
                text.push_str(&format!("{}: {first}\n", field.name));
            }
            if !matches!(name.as_str(), "types" | "suites") {
                for line in &field.more {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
        text
    }
}

/// One host entry in either format, with the file it came from.
#[derive(Clone, Debug)]
enum Entry<'a> {
    OneLine(&'a str, OneLine),
    Stanza(&'a str, Stanza),
}

impl Entry<'_> {
    fn suites(&self) -> Vec<&str> {
        match self {
            Entry::OneLine(_, line) => vec![line.suite.as_str()],
            Entry::Stanza(_, stanza) => stanza.words("Suites"),
        }
    }

    fn components(&self) -> Vec<&str> {
        match self {
            Entry::OneLine(_, line) => line.components.iter().map(String::as_str).collect(),
            Entry::Stanza(_, stanza) => stanza.words("Components"),
        }
    }

    fn file(&self) -> &str {
        match self {
            Entry::OneLine(file, _) | Entry::Stanza(file, _) => file,
        }
    }

    /// Lower is likelier Debian's own archive: third-party repositories (Docker's,
    /// HashiCorp's, ...) also name their suites after the release, but sign with their
    /// own keyring, where Debian's entries name `debian-archive-keyring` or nothing
    /// (the keys in trusted.gpg.d).
    fn preference(&self) -> u8 {
        let signed_by = match self {
            Entry::OneLine(_, line) => line.signed_by().map(str::to_owned),
            Entry::Stanza(_, stanza) => stanza.signed_by(),
        };
        match signed_by {
            Some(s) if s.contains("debian-archive-keyring") => 0,
            None => 1,
            Some(_) => 2,
        }
    }

    /// The added file (name, contents): this entry with the backports suite.
    fn backports_file(&self, codename: &str, suite: &str) -> (String, String) {
        let header = format!(
            "# Written by `cargo xtask`: the host's `{codename}` entry from {}, with the \
             suite {suite}.\n",
            self.file()
        );
        match self {
            Entry::OneLine(_, line) => (
                format!("{ADDED}.list"),
                format!("{header}{}", line.with_suite(suite)),
            ),
            Entry::Stanza(_, stanza) => (
                format!("{ADDED}.sources"),
                format!("{header}{}", stanza.with_suite(suite)),
            ),
        }
    }
}

/// Every enabled `deb` entry of the host, in apt's order.
fn entries(host: &HostSources) -> Vec<Entry<'_>> {
    let list = parse_one_line(&host.list)
        .into_iter()
        .map(|l| Entry::OneLine("/etc/apt/sources.list", l));
    let parts = host.parts.iter().flat_map(|(name, text)| {
        let entries: Vec<Entry<'_>> = if name.ends_with(".sources") {
            parse_deb822(text)
                .into_iter()
                .map(|s| Entry::Stanza(name.as_str(), s))
                .collect()
        } else {
            parse_one_line(text)
                .into_iter()
                .map(|l| Entry::OneLine(name.as_str(), l))
                .collect()
        };
        entries
    });
    list.chain(parts).collect()
}

/// The host's entry for the release's main archive: suite exactly `codename` (not
/// -updates, not -security) with the `main` component, Debian's own keyring preferred.
fn main_archive<'e, 'h>(entries: &'e [Entry<'h>], codename: &str) -> Option<&'e Entry<'h>> {
    entries
        .iter()
        .filter(|e| e.suites().contains(&codename) && e.components().contains(&"main"))
        .min_by_key(|e| e.preference())
}

/// The private configuration for `host` on `os`: the host's sources verbatim, plus the
/// backports suite from the host's own main-archive entry where it is missing.
pub(crate) fn plan(host: &HostSources, os: &OsRelease) -> Private {
    let mut private = Private {
        list: host.list.clone(),
        parts: host.parts.clone(),
        backports: None,
        note: None,
    };
    if os.id != "debian" || os.codename.is_empty() {
        private.note = Some(format!(
            "{} {} is not a Debian release: no backports suite added, the packages come \
             from the host's own apt sources ({TESTED})",
            os.id, os.codename
        ));
        return private;
    }
    let codename = os.codename.as_str();
    let suite = format!("{codename}-backports");
    let entries = entries(host);
    if entries.iter().any(|e| e.suites().contains(&suite.as_str())) {
        private.backports = Some(suite);
    } else if let Some(entry) = main_archive(&entries, codename) {
        private.parts.push(entry.backports_file(codename, &suite));
        private.backports = Some(suite);
    } else {
        private.note = Some(format!(
            "the host's apt sources have no `deb` entry for `{codename}` with `main` to take \
             the mirror from: no {suite} added, the packages come from the host's own apt \
             sources ({TESTED})"
        ));
        return private;
    }
    if codename != TESTED_CODENAME {
        private.note = Some(format!("Debian {codename} is untested ({TESTED})"));
    }
    private
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIRROR: &str = "http://mirror.example/debian";

    fn debian(codename: &str) -> OsRelease {
        OsRelease {
            id: "debian".into(),
            codename: codename.into(),
        }
    }

    fn parts(files: &[(&str, &str)]) -> HostSources {
        HostSources {
            list: String::new(),
            parts: files
                .iter()
                .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
                .collect(),
        }
    }

    fn added(private: &Private) -> Option<&(String, String)> {
        private.parts.iter().find(|(n, _)| n.starts_with(ADDED))
    }

    const INLINE_KEY_STANZA: &str = "\
Types: deb deb-src
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main contrib
Architectures: amd64
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD3K87ZM18gzyQZJD+w
# a comment inside the key, skipped by apt
 =x5hL
 -----END PGP PUBLIC KEY BLOCK-----
";

    #[test]
    fn one_line_with_options_and_comments() {
        let text = "\
# the main archive
deb [ arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg ] http://mirror.example/debian bookworm main contrib # trailing
deb-src http://mirror.example/debian bookworm main
#deb http://mirror.example/debian bookworm-backports main

deb http://mirror.example/debian-security bookworm-security main
deb http://mirror.example/flat ./
";
        let lines = parse_one_line(text);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(
            lines[0],
            OneLine {
                options: "arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg"
                    .into(),
                uri: MIRROR.into(),
                suite: "bookworm".into(),
                components: vec!["main".into(), "contrib".into()],
            }
        );
        assert_eq!(
            lines[0].signed_by(),
            Some("/usr/share/keyrings/debian-archive-keyring.gpg")
        );
        assert_eq!(lines[1].options, "");
        assert_eq!(lines[1].suite, "bookworm-security");
        assert_eq!(lines[2].suite, "./");
        assert!(lines[2].components.is_empty());
    }

    #[test]
    fn deb822_stanzas_uris_suites_enabled_and_inline_key() {
        let text = format!(
            "\
# leading comment
Types: deb
URIs: {MIRROR} http://second.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: {MIRROR}
Suites: bookworm-backports
Components: main
Enabled: no


Types: deb-src
URIs: {MIRROR}
Suites: bookworm
Components: main

{INLINE_KEY_STANZA}"
        );
        let stanzas = parse_deb822(&text);
        assert_eq!(stanzas.len(), 2, "{stanzas:?}");
        assert_eq!(
            stanzas[0].words("uris"),
            [MIRROR, "http://second.example/debian"]
        );
        assert_eq!(stanzas[0].words("Suites"), ["bookworm", "bookworm-updates"]);
        let key = stanzas[1].signed_by().unwrap_or_default();
        assert!(
            key.starts_with("\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n"),
            "{key}"
        );
        assert!(
            key.ends_with(" -----END PGP PUBLIC KEY BLOCK-----"),
            "{key}"
        );
        assert!(!key.contains("a comment"), "{key}");
        assert_eq!(stanzas[1].words("Types"), ["deb", "deb-src"]);
    }

    #[test]
    fn adds_backports_from_a_deb822_host() {
        let host = parts(&[(
            "debian.sources",
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
             Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )]);
        let private = plan(&host, &debian("bookworm"));
        assert_eq!(private.backports.as_deref(), Some("bookworm-backports"));
        assert_eq!(private.note, None);
        assert_eq!(private.parts[0], host.parts[0], "host file copied verbatim");
        let (name, text) = added(&private).cloned().unwrap_or_default();
        assert_eq!(name, "qsnap-backports.sources");
        let stanza = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>();
        assert_eq!(
            stanza,
            [
                "Types: deb",
                "URIs: http://mirror.example/debian",
                "Suites: bookworm-backports",
                "Components: main",
                "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg",
            ]
        );
    }

    #[test]
    fn backports_stanza_keeps_the_hosts_uris_and_inline_key() {
        let host = parts(&[
            // A third-party repository named after the release: not the one to copy.
            (
                "docker.sources",
                "Types: deb\nURIs: https://download.example/linux/debian\nSuites: bookworm\n\
                 Components: stable\nSigned-By: /etc/apt/keyrings/docker.asc\n",
            ),
            ("mirror.sources", INLINE_KEY_STANZA),
        ]);
        let private = plan(&host, &debian("bookworm"));
        let (_, text) = added(&private).cloned().unwrap_or_default();
        let expected = INLINE_KEY_STANZA
            .replace("Types: deb deb-src", "Types: deb")
            .replace(
                "Suites: bookworm bookworm-updates",
                "Suites: bookworm-backports",
            )
            .replace("# a comment inside the key, skipped by apt\n", "");
        assert!(text.ends_with(&expected), "{text}");
        let reparsed = parse_deb822(&text);
        assert_eq!(reparsed.len(), 1);
        assert_eq!(reparsed[0].words("URIs"), [MIRROR]);
        assert_eq!(
            reparsed[0].signed_by(),
            parse_deb822(INLINE_KEY_STANZA)[0].signed_by()
        );
    }

    #[test]
    fn adds_backports_from_a_one_line_host() {
        let host = HostSources {
            list: "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                   http://mirror.example/debian bookworm main non-free-firmware\n\
                   deb http://mirror.example/debian-security bookworm-security main\n"
                .into(),
            parts: vec![],
        };
        let private = plan(&host, &debian("bookworm"));
        assert_eq!(private.list, host.list);
        let (name, text) = added(&private).cloned().unwrap_or_default();
        assert_eq!(name, "qsnap-backports.list");
        assert!(
            text.ends_with(
                "\ndeb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                 http://mirror.example/debian bookworm-backports main non-free-firmware\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn nothing_added_when_the_host_has_backports() {
        let host = HostSources {
            list: format!("deb {MIRROR} bookworm main\ndeb {MIRROR} bookworm-backports main\n"),
            parts: vec![],
        };
        let private = plan(&host, &debian("bookworm"));
        assert_eq!(private.backports.as_deref(), Some("bookworm-backports"));
        assert!(added(&private).is_none());
        assert!(private.parts.is_empty());
    }

    #[test]
    fn disabled_backports_do_not_count() {
        let host = parts(&[(
            "debian.sources",
            "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n\n\
             Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm-backports\n\
             Components: main\nEnabled: no\n",
        )]);
        let private = plan(&host, &debian("bookworm"));
        assert!(added(&private).is_some());
        assert_eq!(private.backports.as_deref(), Some("bookworm-backports"));
    }

    #[test]
    fn ubuntu_gets_nothing_added_and_no_target() {
        let host = parts(&[(
            "ubuntu.sources",
            "Types: deb\nURIs: http://mirror.example/ubuntu\nSuites: noble noble-updates\n\
             Components: main universe\n\
             Signed-By: /usr/share/keyrings/ubuntu-archive-keyring.gpg\n",
        )]);
        let os = parse_os_release(
            "PRETTY_NAME=\"Ubuntu 24.04 LTS\"\nID=ubuntu\nID_LIKE=debian\n\
             VERSION_CODENAME=noble\n",
        );
        assert_eq!(os.id, "ubuntu");
        assert_eq!(os.codename, "noble");
        let private = plan(&host, &os);
        assert_eq!(private.backports, None);
        assert_eq!(private.parts, host.parts);
        assert!(
            private
                .note
                .unwrap_or_default()
                .contains("Debian 12 (bookworm)")
        );
    }

    #[test]
    fn no_main_archive_entry_means_no_target() {
        let host = parts(&[(
            "security.list",
            "deb http://mirror.example/debian-security bookworm-security main\n",
        )]);
        let private = plan(&host, &debian("bookworm"));
        assert_eq!(private.backports, None);
        assert!(added(&private).is_none());
        assert!(private.note.is_some());
    }

    #[test]
    fn other_debian_releases_get_backports_and_a_note() {
        let host = parts(&[(
            "debian.list",
            "deb http://mirror.example/debian trixie main\n",
        )]);
        let private = plan(
            &host,
            &parse_os_release("ID=debian\nVERSION_CODENAME=trixie\n"),
        );
        assert_eq!(private.backports.as_deref(), Some("trixie-backports"));
        assert!(private.note.unwrap_or_default().contains("untested"));
    }

    #[test]
    fn apt_ignores_other_file_names() {
        assert!(apt_reads("debian.sources"));
        assert!(apt_reads("google-cloud-sdk.list"));
        assert!(!apt_reads("nodesource.sources.disabled-by-farm"));
        assert!(!apt_reads("x.list.dpkg-old"));
        assert!(!apt_reads("bad name.list"));
    }

    #[test]
    fn fingerprint_changes_with_any_file() {
        let host = parts(&[("a.list", "deb http://mirror.example/debian bookworm main\n")]);
        let one = plan(&host, &debian("bookworm")).fingerprint();
        let mut changed = host.clone();
        changed.parts[0]
            .1
            .push_str("deb http://mirror.example/debian bookworm contrib\n");
        assert_ne!(one, plan(&changed, &debian("bookworm")).fingerprint());
    }
}
