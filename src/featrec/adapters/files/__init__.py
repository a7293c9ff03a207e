"""Files: event files, raw records, the Parquet event log, snapshots, flow status files, the
model store and the deny-list file.
"""
