"""answers.extract on real teacher outputs (PaLM, text-davinci-002, MCC-KD) and the comparator."""

from __future__ import annotations

import json
import math

import pytest

from mdlab import answers, data

# (source, text tail as the teacher wrote it, the number it commits to)
REAL = [
    # PaLM-540B few-shot CoT (distilling-step-by-step): expression answers and run-ons
    ("palm", "Luke scored 84 points after 2 rounds. So he scored 84 points in 2 rounds. 84 / 2 = 42. The answer is (84 / 2).\n\nQ: There are 120 students in the school. 1/3 of them are boys. How many students are boys?\nA: There are 120 students. 1/3 of them are boys. 1/3 of 120 is 120 / 3 = 40. The answer is (120 /", 42),
    ("palm", "Faye has 7 rows of pencils and crayons. Each row has 36 pencils and 30 crayons. So she has 7 * 36 pencils and 7 * 30 crayons. 7 * 36 is 252. The answer is (7 * 36).\n\nQ: There are 15 trees", 252),
    ("palm", "So there are 272 * 4 = 1088 pieces of junk mail. The answer is (16 * 17) * 4.\n\nQ: There are 15 trees in the grove.", 1088),
    ("palm", "After finding 5 new ones, he had 8 + 5 = 13 marbles. The answer is ((19 - 11) + 5).", 13),
    ("palm", "Altogether, it made 72 + 84 = 156 shirts. The answer is ((6 * 12) + (6 * 14)).", 156),
    ("palm", "He lost 16 crayons. So he lost 278 + 16 = 294 crayons. The answer is ((65 + 213) + 16).", 294),
    ("palm", "So he gave 28 - 13 = 15 crackers and 28 - 15 = 13 cakes. The answer is ((28 - 13) and (28 - 15)).", 15),
    ("palm", "There are 8 seats on each bus. So 80 / 8 = 10 buses are needed. The answer is (102 - 22) / 8.\n\nQ: There", 10),
    ("palm", "So 67 * 66 / 6 = 701 / 6 = 117 buses. The answer is (67 * 66) / 6.\n\nQ: There are 120 students", 737),
    ("palm", "So there are 466 * 53 = 24,798 flowers and 466 * 181 = 84,146 sticks. The answer is (466 * 53) + (466 * 181).", 109044),
    ("palm", "So 3.5 * 60 = 210 flowers grew. The answer is (55 / 15) * 60.\n\nQ: There are 15 trees", 220),
    ("palm", "So Jill has 10 - 8 = 2 peaches. The answer is (17 - 7) - 8.\n\nQ: There are 15 tree", 2),
    ("palm", "Steven has 16 peaches. So Jake has 16 - 7 = 9 peaches.\n\nQ: There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there will be 21 trees. How many trees did the grove workers plant today?\nA: 6", 9),
    ("palm", "So each group will have 8 / 4 = 2 eggs and 6 / 4 = 1.5 marbles. The answer is (8 / 4) and (6 / 4).\n\nQ: There are 120 students in a school. 1/3 of them", 2),
    ("palm", "So she could make 28 * 24 / 16 rows. The answer is (28 * 24) / 16.\n\nQ: There are 15 trees", 42),
    ("palm", "So there are 5440 * 32 = 173280 flowers. The answer is (544 * 10) * 32.\n\nQ: There are 1000 people", 174080),
    ("palm", "Bobby started with 30 pieces of candy. He ate 23. So he has 30 - 23 = 7 pieces of candy left. The answer is (30 - 23).", 7),
    # text-davinci-002 zero-shot CoT (Fine-tune-CoT): currency, commas, negatives, fractions
    ("davinci", "$76 and subtract $25 from it. \n\n$76 - $25 = \n\n$51\n\nTherefore, we would have to pay $51 for ONE \"pack of DVDs.\"", 51),
    ("davinci", " \n\nDan had $3 left with him after he bought a candy bar. \n\nThat means he spent $4 - $3 = $1 on the candy bar.", 1),
    ("davinci", "e buys a candy bar for $8. \nThat leaves him with -$4. \nThen his friend gives him $5. \nThat leaves him with $1.", 1),
    ("davinci", " \n\nFrank reads 22 pages per day. \nThat means he reads 22 * 569 = 12,518 pages in total.", 12518),
    ("davinci", " has 39 animals in it. \n\nWe can set up the equation: \n\nsaltwater animals = (56)(39)\n\nsaltwater animals = 2,184", 2184),
    ("davinci", "ts today. \nThat means it worked for 4 minutes (8/2). \n\nSo the machine worked for a total of 8.5 minutes today.", 8.5),
    ("davinci", "we can divide both sides by 14: \n\n70/14 = (14x)/14 \n\n70/14 = x \n\nTherefore, each package has 5 t-shirts.", 5),
    ("davinci", "That means he has -92 + 31 = -61 cakes. \n\nTherefore, he sold 78 - (-61) = 139 more cakes than those he bought.", 139),
    ("davinci", "n. \nThat means Jake has 4 + 12 = 16 peaches. \n\nSo Jill has 16 - (-7) = 23 peaches, which is 23 more than Jake.", 23),
    ("davinci", "Razorback shop made $192 x 157 = $30,144 from t-shirts.\nTherefore, the answer is $30,144 - $646 = $29,498.", 29498),
    ("davinci", "That means Paul sold 27 books in the garage sale.\nTherefore, the answer is 27.", 27),
    ("davinci", "So Olivia spent 130 dollars at the supermarket.\nTherefore, the answer is 130 dollars.", 130),
    ("davinci", "inal 23, so we take away 8-23 to get -15. \nThat means 15 more children got off the bus than those that got on.", 15),
    # MCC-KD teacher CoTs (gpt-3.5-turbo per its paper): prose endings, commas, decimals, boxed
    ("mcc-kd", "for all 44 friends, Emily will need a total of 2,288 beads (52 beads per necklace x 44 friends = 2,288 beads).", 2288),
    ("mcc-kd", "Therefore, Robin has a total of:\n\n21 packs of gum + 405 pieces of candy = 2,025 pieces of candy", 2025),
    ("mcc-kd", "ieces of candy per package = 405 pieces of candy \n\nTherefore, Robin has 2,025 pieces of candies (45 x 9 x 21).", 2025),
    ("mcc-kd", "Therefore, 20 Ferris wheels in paradise park can hold a total of 5,700 people at the same time.", 5700),
    ("mcc-kd", "gs by the number of days:\n$398 \u00f7 30 = $13.27\n\nTherefore, the ring toss game made approximately $13.27 per day.", 13.27),
    ("mcc-kd", "$420 - $22 = 30x\n$398 = 30x\n$13.27 = x\n\nTherefore, the ring toss game made $13.27 per day.", 13.27),
    ("mcc-kd", " sides of the equation by 7: \n\n21/7 = x \n\nSimplifying: \n\n3 = x \n\nTherefore, Melissa played a total of 3 games.", 3),
    ("mcc-kd", "le. \n\nIn this case, we divide 36 by 18:\n \n            36/18 = 2\n\nTherefore, each friend got to eat 2 crackers.", 2),
    ("mcc-kd", "dents in each grade\n\nNumber of grades = 270/5\n\nNumber of grades = 54\n\nTherefore, there are 54 grades in total.", 54),
    ("mcc-kd", "ie compared to books in the series. Therefore, the actual answer is that you have read 1 more book than movie.", 1),
    ("mcc-kd", "e he started with only 18. \n\nSo the answer is: \n\n- Dave had 2 tickets left after buying some toys and clothes.", 2),
    ("mcc-kd", "However, the question only asks about the number of cakes, so our answer is 59 cakes.", 59),
    ("mcc-kd", "ny additional calculations for that. \n\nTherefore, the answer is that 367 crayons had been lost and given away.", 367),
    ("mcc-kd", "Melissa played a total of 3 games since 7 x 3 = 21.", 3),
    ("mcc-kd", " for 44 friends, she needs a total of 44 x 2 = 88 beads.\nTherefore, Emily started off with 88 - 52 = 36 beads.", 36),
    ("mcc-kd", "he has $252-165=\\boxed{80}$ plants (tomatoes and potatoes together) remaining, assuming he picked no tomatoes.", 80),
    ("mcc-kd", "e number of points he earned in each round. \n\n78 points total / 3 points per round = \\boxed{26} rounds played.", 26),
    ("mcc-kd", "xt{trees that died in typhoon} \\\\ 20 - 4 &= \\boxed{16} \\end{aligned}\n\nTherefore, 16 trees died in the typhoon.", 16),
    ("mcc-kd", "$6 = $22 before he spent his money, as he received the 6 dollars after spending the 16. \n\nAnswer: $\\boxed{22}$", 22),
    ("mcc-kd", "Therefore, you would have 2,173 cookies if you have 53 bags of cookies in total.", 2173),
    ("mcc-kd", "Emily has a total of 72 x 6 = 432 beads.\nShe can make a maximum of 432/3 = 144 necklaces.", 144),
]

SYNTHETIC = [
    ("The answer is 3/4.", 0.75),
    ("The answer is -5.", -5),
    ("the answer is \u22127", -7),
    ("The answer is $1,234.50.", 1234.5),
    ("The answer is 50%.", 50),
    ("#### 72", 72),
    ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 1,072", 1072),
    ("so the total is \\boxed{\\frac{1}{2}}", 0.5),
    ("\\boxed{\\dfrac{3}{4}} pies", 0.75),
    ("Answer: 7", 7),
    ("The answer is 5 + 3 = 8.", 8),
    ("The answer is .5 liters.", 0.5),
    ("The answer is 12.", 12),
    ("The answer is 3.5.", 3.5),
    ("The answer is 1,000,000 stars.", 1_000_000),
    ("The answer is (10 * 45).", 450),
    ("It costs 3 * 4 = 12 dollars. The answer is twelve, i.e. 12.", 12),
    ("He has 5 apples, then 3 more, so 8 apples.", 8),
]


@pytest.mark.parametrize("source,text,value", REAL + [("synthetic", t, v) for t, v in SYNTHETIC])
def test_extract(source, text, value):
    got = answers.extract(text)
    assert got is not None and math.isclose(got, value, abs_tol=1e-6), f"{source}: {got} != {value}"


def test_enough_real_cases():
    assert len(REAL) >= 50 and len(REAL) + len(SYNTHETIC) >= 60


@pytest.mark.parametrize("text", ["", None, "No numbers at all.", "The answer is unknown."])
def test_extract_none_when_nothing_committed(text):
    assert answers.extract(text) is None


def test_safe_arith_refuses_code():
    assert answers.safe_arith("(10 * 45)") == 450
    assert answers.safe_arith("2 ** 100000") is None  # power is not arithmetic here
    assert answers.safe_arith("__import__('os').system('true')") is None
    assert answers.safe_arith("1 / 0") is None


@pytest.mark.parametrize("pred,gold,expected", [
    (0.1 + 0.2, 0.3, True),  # float noise of executed programs
    (0.333, 1 / 3, True),  # a fraction written to three decimals
    (4.5, 4, False),  # no rounding to int
    (-5, 5, False),  # the sign matters
    (1088.5, 1088, False),  # no relative slack for large answers
    (1e9 + 0.5, 1e9, True),  # 1e-6 relative tolerance at large magnitude
    ("1,000", 1000, True),
    ("$51", 51, True),
    (None, 1, False),
    (float("nan"), float("nan"), False),
    (True, 1, False),
])
def test_same(pred, gold, expected):
    assert answers.same(pred, gold) is expected


def _palm(data_dir, split):
    files = ["train_CoT_0.json", "train_CoT_1.json"] if split == "train" else ["test_CoT_0.json"]
    return sum((json.loads((data_dir / "svamp/distilling_step_by_step/llm" / f).read_text()) for f in files), [])


@pytest.mark.parametrize("split,expected", [("train", 595), ("test", 156)])
def test_palm_accuracy_is_pinned(data_dir, split, expected):
    """extract + same on all PaLM SVAMP outputs; see the issue note for the 7/8 cases that differ from
    an independent count (588/148) that read only the first parenthesised group."""
    problems = data.load("svamp", split)
    correct = sum(answers.same(answers.extract(o), p.answer) for o, p in zip(_palm(data_dir, split), problems))
    assert correct == expected
