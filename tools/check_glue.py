import re, sys, nbformat
nb = nbformat.read(sys.argv[1], 4)
md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
refs = set(re.findall(r"\{glue:text\}`([A-Za-z0-9_]+)", md))
glued = set()
for c in nb.cells:
    if c.cell_type == "code":
        for o in c.get("outputs", []):
            sb = o.get("metadata", {}).get("scrapbook")
            if sb: glued.add(sb["name"])
print("missing:", sorted(refs - glued))
print("unused:", sorted(glued - refs))
