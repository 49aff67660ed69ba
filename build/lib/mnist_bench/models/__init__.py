"""The four networks compared by the report; each module builds one of them for 1x28x28 input."""
