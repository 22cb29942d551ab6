//! Tables and sizes in the CLI's human output, through comfy-table and bytesize: no borders,
//! columns two spaces apart and as wide as their widest cell, no trailing spaces, so a
//! long name never runs into the next column and rows stay easy to grep and cut.

use comfy_table::{presets, CellAlignment, Table};

/// `header` and `rows` as a table; `right[i]` aligns column i to the right (numbers, sizes).
/// A cell may hold several lines: the other cells of its row stay blank on the extra lines.
pub(crate) fn table<const N: usize>(
    header: &[&str; N],
    rows: &[[String; N]],
    right: &[bool; N],
) -> String {
    let mut t = Table::new();
    t.load_style(presets::NOTHING);
    t.set_header(header.to_vec());
    for row in rows {
        t.add_row(row.to_vec());
    }
    for (column, right) in t.column_iter_mut().zip(right) {
        // The two spaces after each cell separate the columns; the last one's are trimmed.
        column.set_padding((0, 2));
        if *right {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    let mut out = String::new();
    for line in t.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `0 B`, `1023 B`, `1.5 KiB`, `3.0 GiB`: binary units, one decimal.
pub(crate) fn human_bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_bytes(5 << 50), "5.0 PiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn columns_align_and_multi_line_cells_stay_in_their_column() {
        let text = table(
            &["NAME", "N", "NOTE"],
            &[
                ["a".to_string(), "7".to_string(), "one\ntwo".to_string()],
                ["longer-name".to_string(), "1234".to_string(), String::new()],
            ],
            &[false, true, false],
        );
        assert_eq!(
            text,
            "NAME            N  NOTE\n\
             a               7  one\n\
             \x20                  two\n\
             longer-name  1234\n"
        );
    }
}
