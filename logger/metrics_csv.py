"""metrics.csv: one row per epoch with every logged value, appended as the run goes."""

import csv
from pathlib import Path


class MetricsCsv:
    """Appends one row per epoch. A resumed run keeps the file's header (so the columns never shift) and, at
    its first row, drops the rows of the epochs it is about to redo."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fields: list[str] | None = None  # known once the first row is written

    def append(self, row: dict[str, float]) -> None:
        if self.fields is None:
            self._start(row)
        new = [key for key in row if key not in self.fields]
        if new:  # a column that appears later (rare): rewrite once with the wider header
            self._rewrite(self._read(), self.fields + new)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.fields, restval="").writerow(row)

    def _start(self, row: dict[str, float]) -> None:
        if not self.path.exists():
            self._rewrite([], list(row))
            return
        rows = [r for r in self._read() if r.get("epoch", "").isdigit() and int(r["epoch"]) < row["epoch"]]
        with self.path.open(newline="") as handle:
            fields = list(csv.DictReader(handle).fieldnames or row)
        self._rewrite(rows, fields)

    def _read(self) -> list[dict[str, str]]:
        with self.path.open(newline="") as handle:
            return list(csv.DictReader(handle))

    def _rewrite(self, rows: list[dict[str, str]], fields: list[str]) -> None:
        self.fields = fields
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, restval="")
            writer.writeheader()
            writer.writerows(rows)
