"""The core every other layer uses: the exception family (errors), the one place
a process starts (process), image references (refs) and registry credentials
(credentials). Nothing here imports the tools or the toolkit's features."""
