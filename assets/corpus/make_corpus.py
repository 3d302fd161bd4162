"""Build the course's small multi-domain corpus (assets/corpus/*.txt) from sources on this machine.

    python assets/corpus/make_corpus.py            # rewrites english.txt, python.txt, arithmetic.txt, chinese.txt

Four parts, each about PART_BYTES of UTF-8 (see README.md for provenance and licences):
  english     docstrings of Python standard-library modules, reflowed into paragraphs (PSF licence)
  python      the same modules' source with docstrings and comments removed (PSF licence)
  arithmetic  "a+b=c" style lines generated here (ours, MIT)
  chinese     a few Tang poems and classical lines (public domain) + simple modern sentences generated here (ours, MIT)
The output depends only on the Python version's standard library (recorded in manifest.json) and the fixed seeds.
"""
from __future__ import annotations

import ast
import hashlib
import json
import random
import re
import sys
import sysconfig
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
PART_BYTES = 300_000

# Pure-Python standard-library modules with plenty of prose in their docstrings.
STDLIB_MODULES = [
    "argparse", "textwrap", "difflib", "statistics", "fractions", "calendar", "heapq", "functools",
    "collections/__init__", "random", "subprocess", "threading", "pathlib", "shutil", "tempfile", "inspect",
    "typing", "enum", "dataclasses", "logging/__init__", "unittest/case", "email/message", "http/client",
    "urllib/parse", "zipfile", "tarfile", "pickle", "copy", "contextlib", "abc", "numbers", "string", "pprint",
    "shlex", "sched", "queue", "bisect", "configparser", "optparse", "gettext", "locale", "smtplib", "imaplib",
    "mailbox", "datetime", "_pydecimal", "csv", "json/__init__", "json/decoder", "json/encoder", "ast", "dis",
    "codecs", "io", "os", "socket", "selectors", "weakref", "operator", "tokenize", "trace", "pdb", "cmd",
    "timeit", "turtle", "webbrowser", "wave", "uuid", "zipapp", "platform", "getopt", "glob", "fnmatch",
]


def stdlib_sources() -> list[tuple[str, str]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for name in STDLIB_MODULES:
        path = root / f"{name}.py"
        if path.exists():
            out.append((name, path.read_text(encoding="utf-8")))
    return out


# ------------------------------------------------------------------------------------------ english
def docstrings(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                found.append(doc)
    return found


def is_prose(paragraph: str) -> bool:
    """Keep paragraphs that read as English sentences, not code samples, tables or option lists."""
    if len(paragraph) < 80 or ">>>" in paragraph or "::" in paragraph:
        return False
    if any(line.startswith((" ", "\t", "-", "*", "|", "+", "=")) for line in paragraph.splitlines()):
        return False
    letters = sum(c.isalpha() or c in " .,;:'()-" for c in paragraph)
    return letters / len(paragraph) > 0.93 and paragraph.rstrip().endswith((".", ":", ")"))


def english_part(sources) -> str:
    paragraphs, seen = [], set()
    for _, src in sources:
        for doc in docstrings(ast.parse(src)):
            for para in re.split(r"\n\s*\n", doc):
                para = para.strip()
                if is_prose(para):
                    flat = " ".join(para.split())
                    if flat not in seen:
                        seen.add(flat)
                        paragraphs.append(textwrap.fill(flat, width=100))
    return take("\n\n".join(paragraphs))


# ------------------------------------------------------------------------------------------ python
class DropDocstrings(ast.NodeTransformer):
    def _strip(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_Module = visit_ClassDef = visit_FunctionDef = visit_AsyncFunctionDef = _strip


def python_part(sources) -> str:
    # ast.unparse drops comments; DropDocstrings drops docstrings, so this part is code only
    modules = [f"# {name}.py\n" + ast.unparse(DropDocstrings().visit(ast.parse(src))) for name, src in sources]
    return take("\n\n\n".join(modules))


# ------------------------------------------------------------------------------------------ arithmetic
def arithmetic_part(seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = []
    while sum(len(line) + 1 for line in lines) < PART_BYTES:
        op = rng.choice("+-*")
        if op == "*":
            a, b = rng.randint(2, 99), rng.randint(2, 99)
        else:
            a, b = rng.randint(0, 9999), rng.randint(0, 9999)
        if op == "-" and b > a:
            a, b = b, a
        lines.append(f"{a}{op}{b}={eval(f'{a}{op}{b}')}")
    return take("\n".join(lines))


# ------------------------------------------------------------------------------------------ chinese
# Public-domain classical texts (Tang poems, 8th-9th century; Laozi ch. 1; Analects 1.1).
CLASSICAL = [
    "静夜思　李白\n床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "春晓　孟浩然\n春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。",
    "登鹳雀楼　王之涣\n白日依山尽，黄河入海流。欲穷千里目，更上一层楼。",
    "相思　王维\n红豆生南国，春来发几枝。愿君多采撷，此物最相思。",
    "江雪　柳宗元\n千山鸟飞绝，万径人踪灭。孤舟蓑笠翁，独钓寒江雪。",
    "悯农　李绅\n锄禾日当午，汗滴禾下土。谁知盘中餐，粒粒皆辛苦。",
    "鹿柴　王维\n空山不见人，但闻人语响。返景入深林，复照青苔上。",
    "道德经·第一章\n道可道，非常道。名可名，非常名。无名天地之始；有名万物之母。",
    "论语·学而\n子曰：学而时习之，不亦说乎？有朋自远方来，不亦乐乎？人不知而不愠，不亦君子乎？",
]
WHO = ["小明", "小红", "我", "我们", "老师", "妈妈", "爸爸", "哥哥", "姐姐", "弟弟", "妹妹", "爷爷", "奶奶",
       "王先生", "李小姐", "张老师", "同学们", "医生", "农民", "学生", "朋友", "邻居", "小猫", "小狗"]
WHEN = ["今天", "昨天", "明天", "早上", "中午", "晚上", "周末", "春天", "夏天", "秋天", "冬天", "每天",
        "上午", "下午", "去年", "今年"]
WHERE = ["在公园里", "在学校", "在家里", "在图书馆", "在河边", "在山上", "在市场", "在花园里", "在厨房里",
         "在教室里", "在路上", "在火车上", "在操场上", "在城里", "在村子里"]
DO = ["看书", "写字", "唱歌", "跑步", "做饭", "喝茶", "画画", "打球", "种花", "洗衣服", "学习数学", "听音乐",
      "散步", "买水果", "钓鱼", "骑自行车", "写信", "读诗", "下棋", "做作业", "包饺子", "看电影", "打扫房间"]
FEEL = ["很高兴", "有点累", "非常开心", "很忙", "很安静", "很认真", "很快乐", "有点饿", "很满意"]
WEATHER = ["天气很好", "下雨了", "刮风了", "下雪了", "太阳很大", "天很蓝", "云很多", "有点冷", "非常热"]
THINGS = ["苹果", "书", "花", "鸟", "树", "杯子", "椅子", "铅笔", "小船", "风筝"]
DIGITS = "零一二三四五六七八九"


def chinese_number(n: int) -> str:
    if n < 10:
        return DIGITS[n]
    tens, ones = divmod(n, 10)
    return ("" if tens == 1 else DIGITS[tens]) + "十" + ("" if ones == 0 else DIGITS[ones])


def chinese_sentence(rng: random.Random) -> str:
    kind = rng.randrange(6)
    if kind == 0:
        return f"{rng.choice(WHEN)}{rng.choice(WHO)}{rng.choice(WHERE)}{rng.choice(DO)}。"
    if kind == 1:
        return f"{rng.choice(WHEN)}{rng.choice(WEATHER)}，{rng.choice(WHO)}{rng.choice(FEEL)}。"
    if kind == 2:
        return f"{rng.choice(WHO)}{rng.choice(DO)}以后{rng.choice(FEEL)}。"
    if kind == 3:
        n = rng.randint(2, 99)
        return f"{rng.choice(WHERE)}有{chinese_number(n)}个{rng.choice(THINGS)}。"
    if kind == 4:
        return f"{rng.choice(WHO)}问：“你{rng.choice(WHEN)}想{rng.choice(DO)}吗？”"
    return f"因为{rng.choice(WEATHER)}，所以{rng.choice(WHO)}{rng.choice(WHEN)}不{rng.choice(DO)}。"


def chinese_part(seed: int = 0) -> str:
    rng = random.Random(seed)
    blocks = list(CLASSICAL)
    while sum(len(b.encode("utf-8")) + 2 for b in blocks) < PART_BYTES:
        blocks.append("".join(chinese_sentence(rng) for _ in range(rng.randint(3, 6))))
    return take("\n\n".join(blocks))


# ------------------------------------------------------------------------------------------ output
def take(text: str) -> str:
    """Cut to about PART_BYTES of UTF-8 at a line boundary, never inside a character."""
    data = text.encode("utf-8")[:PART_BYTES].decode("utf-8", errors="ignore")
    return data[: data.rfind("\n") + 1] if "\n" in data else data


def main() -> None:
    sources = stdlib_sources()
    parts = {"english": english_part(sources), "python": python_part(sources),
             "arithmetic": arithmetic_part(), "chinese": chinese_part()}
    manifest = {"python_version": sys.version.split()[0], "stdlib_modules": [name for name, _ in sources],
                "parts": {}}
    for name, text in parts.items():
        data = text.encode("utf-8")
        (HERE / f"{name}.txt").write_bytes(data)
        manifest["parts"][name] = {"file": f"{name}.txt", "bytes": len(data),
                                   "sha256": hashlib.sha256(data).hexdigest()}
        print(f"{name:>10}: {len(data):>8,} bytes")
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
