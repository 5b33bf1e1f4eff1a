"""Writing small release files for reader tests (shared by tests/dataset_readers and tests/eval)."""

import csv
import io


def write_csv(path, header, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buffer.getvalue())
    return path
