//! Functions and Python-style methods that Hugging Face chat templates expect.
//!
//! Templates are written for Python's Jinja2, where strings and dicts carry Python methods
//! (`message.content.strip()`, `tool.get('name')`, `d.items()`). MiniJinja leaves unknown
//! methods to a callback; `call_method` implements the common ones. Also here:
//! `raise_exception` (templates use it to reject bad conversations) and `strftime_now`.

use minijinja::value::{Value, ValueKind};
use minijinja::{Error, ErrorKind, State};

/// `raise_exception(message)`: aborts rendering with the template's message.
pub fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("template raised: {message}"),
    ))
}

/// `strftime_now(format)`: the current UTC time formatted with the usual `%` codes
/// (`%Y %m %d %H %M %S %y %b %B %a %A %j %p %I %%`; `%-d`-style no-padding also works).
pub fn strftime_now(format: String) -> Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(Value::from(strftime(&format, secs)))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Formats a Unix time (UTC).
pub fn strftime(format: &str, unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let hour = secs_of_day / 3600;
    let minute = secs_of_day / 60 % 60;
    let second = secs_of_day % 60;
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = (days.rem_euclid(7) + 3) as usize % 7;
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut spec = chars.next();
        // glibc's "%-d": no zero padding.
        let pad = spec != Some('-');
        if !pad {
            spec = chars.next();
        }
        let num = |v: u64, width: usize| {
            if pad {
                format!("{v:0width$}")
            } else {
                v.to_string()
            }
        };
        match spec {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&num(year.rem_euclid(100) as u64, 2)),
            Some('m') => out.push_str(&num(month as u64, 2)),
            Some('d') => out.push_str(&num(day as u64, 2)),
            Some('e') => out.push_str(&format!("{day:>2}")),
            Some('H') => out.push_str(&num(hour, 2)),
            Some('I') => out.push_str(&num((hour + 11) % 12 + 1, 2)),
            Some('M') => out.push_str(&num(minute, 2)),
            Some('S') => out.push_str(&num(second, 2)),
            Some('j') => out.push_str(&num(day_of_year as u64, 3)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('B') => out.push_str(month_name),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The unknown-method callback: Python `str` and `dict` methods.
pub fn call_method(
    _state: &State,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::String => string_method(value.as_str().unwrap_or_default(), method, args),
        ValueKind::Map => map_method(value, method, args),
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

fn arg_str<'v>(args: &'v [Value], i: usize, method: &str) -> Result<Option<&'v str>, Error> {
    match args.get(i) {
        None => Ok(None),
        Some(v) if v.is_none() || v.is_undefined() => Ok(None),
        Some(v) => v.as_str().map(Some).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("{method}() expects a string argument"),
            )
        }),
    }
}

fn too_many(args: &[Value], max: usize, method: &str) -> Result<(), Error> {
    if args.len() > max {
        return Err(Error::new(
            ErrorKind::TooManyArguments,
            format!("{method}() takes at most {max} arguments"),
        ));
    }
    Ok(())
}

fn string_method(s: &str, method: &str, args: &[Value]) -> Result<Value, Error> {
    let strip_set = |args: &[Value]| -> Result<Option<Vec<char>>, Error> {
        too_many(args, 1, method)?;
        Ok(arg_str(args, 0, method)?.map(|set| set.chars().collect()))
    };
    match method {
        "strip" | "lstrip" | "rstrip" => {
            let set = strip_set(args)?;
            let matches = |c: char| match &set {
                Some(set) => set.contains(&c),
                None => c.is_whitespace(),
            };
            Ok(Value::from(match method {
                "strip" => s.trim_matches(matches),
                "lstrip" => s.trim_start_matches(matches),
                _ => s.trim_end_matches(matches),
            }))
        }
        "startswith" | "endswith" => {
            too_many(args, 1, method)?;
            let arg = args.first().ok_or_else(|| {
                Error::new(
                    ErrorKind::MissingArgument,
                    format!("{method}() needs a prefix"),
                )
            })?;
            // Python accepts one string or a tuple (list) of strings.
            let candidates: Vec<Value> = match arg.kind() {
                ValueKind::String => vec![arg.clone()],
                _ => arg.try_iter()?.collect(),
            };
            let hit = candidates.iter().any(|c| match c.as_str() {
                Some(p) if method == "startswith" => s.starts_with(p),
                Some(p) => s.ends_with(p),
                None => false,
            });
            Ok(Value::from(hit))
        }
        "split" | "rsplit" => {
            too_many(args, 2, method)?;
            let sep = arg_str(args, 0, method)?;
            let limit = match args.get(1) {
                Some(v) if !v.is_none() => v.as_i64().filter(|&n| n >= 0).map(|n| n as usize),
                _ => None,
            };
            Ok(Value::from(split(s, sep, limit, method == "rsplit")?))
        }
        "upper" => Ok(Value::from(s.to_uppercase())),
        "lower" => Ok(Value::from(s.to_lowercase())),
        "title" => Ok(Value::from(title(s))),
        "capitalize" => {
            let mut chars = s.chars();
            Ok(Value::from(match chars.next() {
                Some(first) => first
                    .to_uppercase()
                    .chain(chars.flat_map(char::to_lowercase))
                    .collect(),
                None => String::new(),
            }))
        }
        "replace" => {
            too_many(args, 3, method)?;
            let (Some(old), Some(new)) = (arg_str(args, 0, method)?, arg_str(args, 1, method)?)
            else {
                return Err(Error::new(
                    ErrorKind::MissingArgument,
                    "replace() needs old and new",
                ));
            };
            let out = match args.get(2).and_then(Value::as_i64) {
                Some(n) if n >= 0 => s.replacen(old, new, n as usize),
                _ => s.replace(old, new),
            };
            Ok(Value::from(out))
        }
        "find" => {
            too_many(args, 1, method)?;
            let needle = arg_str(args, 0, method)?.unwrap_or_default();
            Ok(Value::from(
                s.find(needle)
                    .map(|b| s[..b].chars().count() as i64)
                    .unwrap_or(-1),
            ))
        }
        "count" => {
            too_many(args, 1, method)?;
            let needle = arg_str(args, 0, method)?.unwrap_or_default();
            Ok(Value::from(if needle.is_empty() {
                s.chars().count() + 1
            } else {
                s.matches(needle).count()
            }))
        }
        "join" => {
            too_many(args, 1, method)?;
            let items = args
                .first()
                .ok_or_else(|| Error::new(ErrorKind::MissingArgument, "join() needs a list"))?;
            let parts: Vec<String> = items.try_iter()?.map(|v| v.to_string()).collect();
            Ok(Value::from(parts.join(s)))
        }
        "isdigit" => Ok(Value::from(
            !s.is_empty() && s.chars().all(|c| c.is_ascii_digit()),
        )),
        "isalpha" => Ok(Value::from(
            !s.is_empty() && s.chars().all(char::is_alphabetic),
        )),
        "isspace" => Ok(Value::from(
            !s.is_empty() && s.chars().all(char::is_whitespace),
        )),
        "islower" => Ok(Value::from(
            s.chars().any(char::is_lowercase) && !s.chars().any(char::is_uppercase),
        )),
        "isupper" => Ok(Value::from(
            s.chars().any(char::is_uppercase) && !s.chars().any(char::is_lowercase),
        )),
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

/// Python's `str.split` / `str.rsplit`: no separator splits on runs of whitespace and drops
/// empty parts; an explicit separator keeps them.
fn split(
    s: &str,
    sep: Option<&str>,
    limit: Option<usize>,
    from_right: bool,
) -> Result<Vec<String>, Error> {
    let max_parts = limit.map(|n| n.saturating_add(1)).unwrap_or(usize::MAX);
    let mut parts: Vec<String> = match sep {
        Some("") => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                "split(): empty separator",
            ));
        }
        Some(sep) if from_right => s.rsplitn(max_parts, sep).map(str::to_string).collect(),
        Some(sep) => s.splitn(max_parts, sep).map(str::to_string).collect(),
        None => {
            let words: Vec<&str> = s.split_whitespace().collect();
            if words.len() <= max_parts {
                words.into_iter().map(str::to_string).collect()
            } else if from_right {
                // Keep the last `limit` words separate, the rest (as written) in front.
                let keep = max_parts - 1;
                let head_end = nth_word_end_from_right(s, keep);
                let mut out = vec![s[..head_end].trim_end().to_string()];
                out.extend(words[words.len() - keep..].iter().map(|w| w.to_string()));
                out.reverse();
                out
            } else {
                let keep = max_parts - 1;
                let mut out: Vec<String> = words[..keep].iter().map(|w| w.to_string()).collect();
                let tail_start = nth_word_start(s, keep);
                out.push(s[tail_start..].trim_start().to_string());
                out
            }
        }
    };
    if from_right {
        parts.reverse();
    }
    Ok(parts)
}

/// Byte offset where word number `n` (0-based) starts.
fn nth_word_start(s: &str, n: usize) -> usize {
    let mut count = 0;
    let mut in_word = false;
    for (i, c) in s.char_indices() {
        if c.is_whitespace() {
            in_word = false;
        } else if !in_word {
            if count == n {
                return i;
            }
            count += 1;
            in_word = true;
        }
    }
    s.len()
}

/// Byte offset just past the text that precedes the last `n` words.
fn nth_word_end_from_right(s: &str, n: usize) -> usize {
    let mut count = 0;
    let mut in_word = false;
    for (i, c) in s.char_indices().rev() {
        if c.is_whitespace() {
            if in_word && count == n {
                return i + c.len_utf8();
            }
            in_word = false;
        } else if !in_word {
            count += 1;
            in_word = true;
        }
    }
    0
}

fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut prev_cased = false;
    for c in s.chars() {
        if prev_cased {
            out.extend(c.to_lowercase());
        } else {
            out.extend(c.to_uppercase());
        }
        prev_cased = c.is_alphabetic();
    }
    out
}

fn map_method(map: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    match method {
        "items" => {
            too_many(args, 0, method)?;
            let mut pairs = Vec::new();
            for key in map.try_iter()? {
                let value = map.get_item(&key)?;
                pairs.push(Value::from(vec![key, value]));
            }
            Ok(Value::from(pairs))
        }
        "keys" => {
            too_many(args, 0, method)?;
            Ok(Value::from(map.try_iter()?.collect::<Vec<_>>()))
        }
        "values" => {
            too_many(args, 0, method)?;
            let mut values = Vec::new();
            for key in map.try_iter()? {
                values.push(map.get_item(&key)?);
            }
            Ok(Value::from(values))
        }
        "get" => {
            too_many(args, 2, method)?;
            let key = args
                .first()
                .ok_or_else(|| Error::new(ErrorKind::MissingArgument, "get() needs a key"))?;
            let found = map.get_item(key)?;
            Ok(if found.is_undefined() {
                args.get(1).cloned().unwrap_or(Value::from(()))
            } else {
                found
            })
        }
        _ => Err(Error::from(ErrorKind::UnknownMethod)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_instant() {
        // 2024-02-29 13:05:09 UTC, a Thursday.
        let t = 1_709_211_909;
        assert_eq!(strftime("%Y-%m-%d %H:%M:%S", t), "2024-02-29 13:05:09");
        assert_eq!(strftime("%d %b %Y", t), "29 Feb 2024");
        assert_eq!(
            strftime("%A %B %-d, %j %I%p %%", t),
            "Thursday February 29, 060 01PM %"
        );
        assert_eq!(strftime("%Y-%m-%d", 0), "1970-01-01");
    }

    #[test]
    fn python_split() {
        let s = |v: Vec<String>| v;
        assert_eq!(
            split("  a b  c ", None, None, false).unwrap(),
            s(vec!["a".into(), "b".into(), "c".into()])
        );
        assert_eq!(
            split("a,b,,c", Some(","), None, false).unwrap(),
            vec!["a", "b", "", "c"]
        );
        assert_eq!(
            split("a,b,c", Some(","), Some(1), false).unwrap(),
            vec!["a", "b,c"]
        );
        assert_eq!(
            split("a,b,c", Some(","), Some(1), true).unwrap(),
            vec!["a,b", "c"]
        );
        assert_eq!(
            split("a b  c d", None, Some(1), false).unwrap(),
            vec!["a", "b  c d"]
        );
        assert_eq!(
            split("a b  c d", None, Some(1), true).unwrap(),
            vec!["a b  c", "d"]
        );
        assert!(split("abc", Some(""), None, false).is_err());
    }

    #[test]
    fn title_case() {
        assert_eq!(title("hello wORLD 2nd"), "Hello World 2Nd");
    }
}
