//! The markdown tables of docs/BENCHMARKS.md: every section renders its tables
//! through [`Table`], so they all have the same shape (a header row, a row of
//! `---` or `--:` per column, then one line per row) and their cells the same
//! conventions ([`code`], [`ratio`]).
//!
//! Each section's test renders it from fixed figures and compares the text with
//! bench/snapshots/SECTION.md, byte for byte: a change to a section's text or
//! tables updates its snapshot in the same commit.

use crate::measure::Stats;

/// How a column's cells are aligned: text left, figures right. Sections import
/// them as `L` and `R` to keep their column lists short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A markdown table, rendered row by row.
#[derive(Debug)]
pub struct Table {
    text: String,
    columns: usize,
}

impl Table {
    /// A table with these columns, each a header and an alignment.
    pub fn new<H: AsRef<str>>(columns: &[(H, Align)]) -> Table {
        let mut table = Table {
            text: String::new(),
            columns: columns.len(),
        };
        table.line(columns.iter().map(|(header, _)| header.as_ref()));
        table.text.push('|');
        for (_, align) in columns {
            table.text.push_str(match align {
                Align::Left => "---|",
                Align::Right => "--:|",
            });
        }
        table.text.push('\n');
        table
    }

    /// A table of samples: a subject, its command, the median, p10 and p90 of its
    /// samples in `unit`, then the columns `more`.
    pub fn of_stats(unit: &str, more: &[(&str, Align)]) -> Table {
        let columns: Vec<(String, Align)> = [
            ("subject".to_owned(), Align::Left),
            ("command".to_owned(), Align::Left),
        ]
        .into_iter()
        .chain(
            ["median", "p10", "p90"]
                .into_iter()
                .map(|stat| (format!("{stat} {unit}"), Align::Right)),
        )
        .chain(more.iter().map(|(h, a)| ((*h).to_owned(), *a)))
        .collect();
        Table::new(&columns)
    }

    /// A row of a table [`Table::of_stats`] made: the figures with `decimals`
    /// decimals, then the cells of the columns `more`.
    pub fn stats_row(
        &mut self,
        subject: &str,
        command: &str,
        st: &Stats,
        decimals: usize,
        more: impl IntoIterator<Item = String>,
    ) {
        let figures = [st.median, st.p10, st.p90].map(|v| format!("{v:.decimals$}"));
        self.row(
            [subject.to_owned(), code(command)]
                .into_iter()
                .chain(figures)
                .chain(more),
        );
    }

    /// One row; it must have a cell per column.
    pub fn row<C: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = C>) {
        let cells: Vec<C> = cells.into_iter().collect();
        assert_eq!(
            cells.len(),
            self.columns,
            "a row of {} cells in a table of {} columns",
            cells.len(),
            self.columns
        );
        self.line(cells.iter().map(AsRef::as_ref));
    }

    fn line<'a>(&mut self, cells: impl Iterator<Item = &'a str>) {
        self.text.push('|');
        for cell in cells {
            self.text.push(' ');
            self.text.push_str(cell);
            self.text.push_str(" |");
        }
        self.text.push('\n');
    }

    /// The table's lines, each ending in a newline.
    pub fn render(self) -> String {
        self.text
    }
}

/// A command (or other literal text) as a code cell: in backticks, with `|`
/// escaped so it can't end the cell.
pub fn code(text: &str) -> String {
    format!("`{}`", text.replace('|', "\\|"))
}

/// `num / den` as a table's ratio ("1.25×"), or "–" without a positive `den`.
pub fn ratio(num: f64, den: Option<f64>) -> String {
    match den {
        Some(d) if d > 0.0 => format!("{:.2}×", num / d),
        _ => "–".to_owned(),
    }
}

/// A ratio in a sentence ("1.25x"; tables write "×"), or "–" when there is none.
pub fn factor(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.2}x"))
}

#[cfg(test)]
mod tests {
    use super::Align::{Left as L, Right as R};
    use super::*;

    #[test]
    fn renders_header_alignment_and_rows() {
        let mut t = Table::new(&[
            ("subject", L),
            ("command", L),
            ("median ms", R),
            ("vs host", R),
        ]);
        t.row(["fvm run", &code("a | b"), "1.50", &ratio(1.5, Some(0.5))]);
        t.row(["", "``", "2.00", &ratio(2.0, None)]);
        assert_eq!(
            t.render(),
            "| subject | command | median ms | vs host |\n\
             |---|---|--:|--:|\n\
             | fvm run | `a \\| b` | 1.50 | 3.00× |\n\
             |  | `` | 2.00 | – |\n"
        );
    }

    #[test]
    fn tables_of_samples_start_with_the_same_columns() {
        let mut t = Table::of_stats("s", &[("vs cp", R), ("target", L)]);
        let st = Stats {
            median: 1.0,
            p10: 0.5,
            p90: 2.25,
        };
        t.stats_row(
            "fvm copy",
            "fvm copy A B",
            &st,
            3,
            ["1.00×".into(), "met".into()],
        );
        assert_eq!(
            t.render(),
            "| subject | command | median s | p10 s | p90 s | vs cp | target |\n\
             |---|---|--:|--:|--:|--:|---|\n\
             | fvm copy | `fvm copy A B` | 1.000 | 0.500 | 2.250 | 1.00× | met |\n"
        );
    }

    #[test]
    fn alignment_may_alternate() {
        let t = Table::new(&[("VMs", R), ("what", L)]);
        assert_eq!(t.render(), "| VMs | what |\n|--:|---|\n");
        assert_eq!(ratio(1.0, Some(0.0)), "–");
        assert_eq!(
            (factor(Some(1.049)), factor(None)),
            ("1.05x".into(), "–".into())
        );
    }

    #[test]
    #[should_panic(expected = "a row of 1 cells in a table of 2 columns")]
    fn a_row_of_the_wrong_width_is_a_bug() {
        Table::new(&[("a", L), ("b", R)]).row(["x"]);
    }
}
