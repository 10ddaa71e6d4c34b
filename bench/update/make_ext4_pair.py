#!/usr/bin/env python3
"""Build an ext4 system-image pair the way ota-small was built, at any size:
old = `mkfs.ext4 -d` of a tree of real system files (taken from this
machine's /usr, up to 70% of the image); new = the same tree after an
"upgrade" — some files rewritten the way a rebuilt package changes them
(scattered byte edits plus a few inserted and deleted runs, which shift the
rest of the file), some deleted, some renamed, some added (other real files)
— and a configuration file edited, then imaged FROM SCRATCH with
`mkfs.ext4 -d` (files land at new places: the rebuilt case).

The file contents are real, the changes are synthetic (no package archive is
needed, and the same seed gives the same pair on any Debian 12 machine with
the same /usr). Usage: make_ext4_pair.py OLD NEW [MiB] [seed]

With FS=erofs the two trees are imaged with `mkfs.erofs -zlz4hc` (LZ4
compressed, 4 KiB blocks), with FS=squashfs with `mksquashfs` (gzip, 4 KiB
padding): compressed read-only images of the same two versions, where an
edit recompresses whole clusters and everything after a changed file moves.
MiB is then the budget the tree is chosen for (the image is smaller)."""
import os, random, shutil, subprocess, sys, tempfile

fs_kind = os.environ.get("FS", "ext4")

old_img, new_img = sys.argv[1], sys.argv[2]
mib = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
rng = random.Random(int(sys.argv[4]) if len(sys.argv) > 4 else 7)
budget = mib * 1024 * 1024 * 7 // 10

def files_under(root):
    for d, dirs, fs in os.walk(root):
        dirs.sort()
        for f in sorted(fs):
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                yield p

work = tempfile.mkdtemp(prefix="ext4pair.", dir=os.path.dirname(os.path.abspath(old_img)))
try:
    tree = os.path.join(work, "tree")
    chosen, spare, total = [], [], 0
    for p in files_under("/usr"):
        try:
            sz = os.path.getsize(p)
        except OSError:
            continue
        if sz > 64 << 20:
            continue
        if total + sz <= budget and rng.random() < 0.8:
            chosen.append(p)
            total += sz
        elif len(spare) < 4000:
            spare.append(p)
    for p in chosen:
        dst = os.path.join(tree, p.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(p, dst)
    os.makedirs(os.path.join(tree, "etc"), exist_ok=True)
    conf = os.path.join(tree, "etc", "system.conf")
    with open(conf, "w") as f:
        for i in range(4000):
            f.write(f"option.{i} = value{rng.randrange(100000)}\n")
    mk = ["mkfs.ext4", "-q", "-F", "-U", "11111111-2222-4333-8444-555555555555",
          "-E", "lazy_itable_init=0,lazy_journal_init=0", "-d"]
    def image(out):
        if fs_kind == "erofs":
            subprocess.run(["mkfs.erofs", "-zlz4hc", "-T0", "-U", "11111111-2222-4333-8444-555555555555",
                            "--all-root", "--quiet", out, tree], check=True)
        elif fs_kind == "squashfs":
            subprocess.run(["mksquashfs", tree, out, "-noappend", "-no-progress", "-quiet", "-all-root",
                            "-mkfs-time", "0", "-all-time", "0"], check=True, stdout=subprocess.DEVNULL)
        else:
            subprocess.run(mk + [tree, out, f"{mib}M"], check=True)
        sz = os.path.getsize(out)
        if sz % 4096:  # whole 4 KiB blocks (update-diff's block size)
            with open(out, "ab") as f:
                f.write(bytes(4096 - sz % 4096))
    image(old_img)

    names = sorted(os.path.relpath(os.path.join(d, f), tree) for d, _, fs in os.walk(tree) for f in fs)
    rng.shuffle(names)
    n = len(names)
    upgraded = names[: n * 15 // 100]
    deleted = names[n * 15 // 100: n * 17 // 100]
    renamed = names[n * 17 // 100: n * 19 // 100]
    for rel in upgraded:
        p = os.path.join(tree, rel)
        data = bytearray(open(p, "rb").read())
        if not data:
            continue
        for _ in range(max(1, len(data) // 2000)):  # scattered edits (addresses, versions)
            data[rng.randrange(len(data))] = rng.randrange(256)
        for _ in range(rng.randrange(1, 4)):  # inserted and deleted runs shift what follows
            at = rng.randrange(len(data) + 1)
            if rng.random() < 0.5:
                data[at:at] = os.urandom(rng.randrange(1, 200))
            else:
                del data[at:at + rng.randrange(1, 200)]
        open(p, "wb").write(data)
    for rel in deleted:
        os.remove(os.path.join(tree, rel))
    for rel in renamed:
        dst = os.path.join(tree, "opt", "moved", rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.rename(os.path.join(tree, rel), dst)
    added = 0
    for p in spare:
        if added > budget // 30:
            break
        dst = os.path.join(tree, "opt", "new", p.lstrip("/"))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(p, dst)
        added += os.path.getsize(p)
    lines = open(conf).read().splitlines(True)
    for _ in range(200):
        lines[rng.randrange(len(lines))] = f"option.edited = value{rng.randrange(100000)}\n"
    open(conf, "w").write("".join(lines))
    image(new_img)
    print(f"{old_img}, {new_img}: {mib} MiB {fs_kind}, {len(chosen)} files ({total >> 20} MiB) from /usr; "
          f"{len(upgraded)} rewritten, {len(deleted)} deleted, {len(renamed)} renamed, {added >> 20} MiB added")
finally:
    shutil.rmtree(work, ignore_errors=True)
