//! The layers under every setting: the flag's default < the config file < the environment <
//! the command line. clap already ranks the last three against each other and says which one
//! gave a value (`ArgMatches::value_source`, kept in `cli::Guard`); this puts the file in
//! between and gives each value its `Origin`.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;

use super::file::FileValues;
use super::origin::{Given, Origin};
use super::spec::Spec;
use super::ConfigError;
use crate::cli::Guard;

pub(crate) struct Layers<'a> {
    pub guard: &'a Guard,
    spec: Spec,
    pub file: FileValues,
    /// The ids read so far: a test checks that every declared flag reaches `Settings`.
    read: RefCell<BTreeSet<String>>,
}

/// A text value of a `GuardArgs` field, layered: `text!(layers, max_wall)`.
macro_rules! text {
    ($l:expr, $f:ident) => {
        $l.text(stringify!($f), $l.guard.$f.as_deref())
    };
}

/// A path value of a `GuardArgs` field, layered.
macro_rules! path_of {
    ($l:expr, $f:ident) => {
        $l.path(stringify!($f), $l.guard.$f.as_deref())
    };
}

/// A yes/no `GuardArgs` field (a switch or a boolish `Option<bool>`), layered.
macro_rules! switch {
    ($l:expr, $f:ident) => {
        $l.switch(stringify!($f), $l.guard.$f.into())
    };
}

pub(crate) use {path_of, switch, text};

/// A switch's value as clap has it: `quiet: bool` (false when absent) or `shared_gpus:
/// Option<bool>`.
pub(crate) struct Switch(Option<bool>);

impl From<bool> for Switch {
    fn from(b: bool) -> Switch {
        Switch(Some(b))
    }
}

impl From<Option<bool>> for Switch {
    fn from(b: Option<bool>) -> Switch {
        Switch(b)
    }
}

impl<'a> Layers<'a> {
    pub fn new(guard: &'a Guard) -> Result<Layers<'a>, ConfigError> {
        let spec = Spec::new();
        let mut layers = Layers {
            guard,
            spec,
            file: FileValues::default(),
            read: RefCell::default(),
        };
        if let Some(p) = path_of!(layers, config) {
            layers.file = FileValues::load(&p.value, p.origin, &layers.spec)?;
        }
        Ok(layers)
    }

    fn mark(&self, id: &str) {
        self.read.borrow_mut().insert(id.to_string());
    }

    /// The declared flags no resolution has read.
    #[cfg(test)]
    pub fn unread(&self) -> Vec<String> {
        let read = self.read.borrow();
        self.spec
            .flags
            .iter()
            .filter(|f| !read.contains(&f.id))
            .map(|f| f.id.clone())
            .collect()
    }

    fn flag_origin(&self, id: &str, source: ValueSource) -> Origin {
        let f = self.spec.by_id(id);
        let flag = f.long.clone();
        match (source, &f.env) {
            (ValueSource::EnvVariable, Some(var)) => Origin::Env {
                flag,
                var: var.clone(),
            },
            (ValueSource::DefaultValue, _) => Origin::Default { flag },
            _ => Origin::Flag { flag },
        }
    }

    /// Which layer gives flag `id`: clap's value when a person gave it, else the file's, else
    /// clap's default.
    fn layered<T>(
        &self,
        id: &str,
        cli: Option<T>,
        from_file: impl FnOnce(&str) -> Option<T>,
    ) -> Option<Given<T>> {
        self.mark(id);
        let source = self.guard.source(id);
        let person = matches!(
            source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        let clap = |v: T| {
            source.map(|s| Given {
                value: v,
                origin: self.flag_origin(id, s),
            })
        };
        match (person, cli, self.file.values.get(id)) {
            (true, Some(v), _) => clap(v),
            (_, _, Some(g)) => from_file(&g.value).map(|value| Given {
                value,
                origin: g.origin.clone(),
            }),
            (_, Some(v), None) => clap(v),
            (_, None, None) => None,
        }
    }

    pub fn text(&self, id: &str, cli: Option<&str>) -> Option<Given<String>> {
        self.layered(id, cli.map(str::to_string), |v| Some(v.to_string()))
    }

    pub fn path(&self, id: &str, cli: Option<&Path>) -> Option<Given<PathBuf>> {
        self.layered(id, cli.map(Path::to_path_buf), |v| Some(PathBuf::from(v)))
    }

    /// A yes/no setting; false when no layer says yes.
    pub fn switch(&self, id: &str, cli: Switch) -> bool {
        self.layered(id, cli.0, |v| Some(v == "true"))
            .is_some_and(|g| g.value)
    }

    /// Where the value of flag `id` comes from, whatever it is: for errors about two settings
    /// together ("--warn-signal needs --warn-before"). `--x` when no layer gives it.
    pub fn origin(&self, id: &str) -> Origin {
        let source = self.guard.source(id);
        match (self.given(id), self.file.values.get(id), source) {
            (true, _, Some(s)) => self.flag_origin(id, s),
            (_, Some(g), _) => g.origin.clone(),
            (_, None, Some(s)) => self.flag_origin(id, s),
            _ => Origin::Flag {
                flag: self.spec.by_id(id).long.clone(),
            },
        }
    }

    /// Whether a person gave flag `id` (command line or environment), whatever the file says.
    pub fn given(&self, id: &str) -> bool {
        self.guard.given(id)
    }
}
