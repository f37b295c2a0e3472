"""Built-in Vietnamese text for synthetic lines: hand-written sentences mixed with random syllables.

Syllables are built as onset + rhyme + tone following Vietnamese spelling rules (c/k/q, g/gh, ng/ngh,
tone-mark placement), so every vowel letter carries every tone somewhere in the output, which the
real sentences alone would not guarantee.
"""

import random
import unicodedata

# Combining marks of the five marked tones; "" is the level (ngang) tone.
TONE_MARKS = ("", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323")  # ngang huyền sắc hỏi ngã nặng
# Stop-final syllables (-p -t -c -ch) only take sắc or nặng.
STOP_TONE_MARKS = ("\u0301", "\u0323")
VOWELS = "aăâeêioôơuưy"
# Vowels that carry the tone mark whenever present (ươ puts it on ơ, the last one).
MARKED_VOWELS = "ăâêôơư"

ONSETS = (
    "",
    "b", "c", "ch", "d", "đ", "g", "gh", "gi", "h", "k", "kh", "l", "m", "n", "ng", "ngh", "nh",
    "p", "ph", "qu", "r", "s", "t", "th", "tr", "v", "x",
)  # fmt: skip

RHYMES = [
    "a",
    "ai",
    "ao",
    "au",
    "ay",
    "an",
    "ang",
    "anh",
    "am",
    "ap",
    "at",
    "ac",
    "ach",
    "ăn",
    "ăng",
    "ăm",
    "ăp",
    "ăt",
    "ăc",
    "âu",
    "ây",
    "ân",
    "âng",
    "âm",
    "âp",
    "ât",
    "âc",
    "e",
    "eo",
    "en",
    "eng",
    "em",
    "ep",
    "et",
    "ec",
    "ê",
    "êu",
    "ên",
    "ênh",
    "êm",
    "êp",
    "êt",
    "êch",
    "i",
    "ia",
    "iu",
    "in",
    "inh",
    "im",
    "ip",
    "it",
    "ich",
    "iêu",
    "iên",
    "iêng",
    "iêm",
    "iêp",
    "iêt",
    "iêc",
    "o",
    "oa",
    "oai",
    "oay",
    "oan",
    "oang",
    "oanh",
    "oat",
    "oac",
    "oach",
    "oe",
    "oeo",
    "oen",
    "oet",
    "oi",
    "on",
    "ong",
    "om",
    "op",
    "ot",
    "oc",
    "ô",
    "ôi",
    "ôn",
    "ông",
    "ôm",
    "ôp",
    "ôt",
    "ôc",
    "ơ",
    "ơi",
    "ơn",
    "ơm",
    "ơp",
    "ơt",
    "u",
    "ua",
    "ui",
    "uy",
    "uya",
    "uyên",
    "uyêt",
    "uân",
    "uât",
    "uôi",
    "uôn",
    "uông",
    "uôm",
    "uôt",
    "uôc",
    "un",
    "ung",
    "um",
    "up",
    "ut",
    "uc",
    "ư",
    "ưa",
    "ưi",
    "ưu",
    "ưng",
    "ưn",
    "ưt",
    "ưc",
    "ươi",
    "ươu",
    "ươn",
    "ương",
    "ươm",
    "ươp",
    "ươt",
    "ươc",
    "y",
    "yêu",
    "yên",
    "yêm",
    "yêt",
]

# Written for this project; everyday register like the news prose of UIT-HWDB.
SENTENCES = (
    "Sáng nay trời mưa nhẹ, đường phố vắng hơn mọi ngày.",
    "Chúng tôi đã hoàn thành bài kiểm tra trước giờ nghỉ trưa.",
    "Mẹ dặn em nhớ mang theo áo ấm khi đi học.",
    "Cô giáo khen cả lớp vì đã chuẩn bị bài rất kỹ.",
    "Người nông dân đang gặt lúa trên cánh đồng vàng óng.",
    "Ông bà ngoại sống ở một ngôi làng nhỏ ven sông Hồng.",
    "Hội chợ cuối tuần thu hút hàng nghìn du khách.",
    "Thành phố sẽ mở thêm ba tuyến xe buýt mới trong năm tới.",
    "Anh ấy đọc sách mỗi tối trước khi đi ngủ.",
    "Những chiếc thuyền đánh cá trở về bến khi trời vừa hửng sáng.",
    "Giá rau củ ở chợ tăng nhẹ do ảnh hưởng của bão.",
    "Bác sĩ khuyên mọi người nên uống đủ nước mỗi ngày.",
    "Đội bóng của trường giành chiến thắng với tỉ số hai một.",
    "Tôi muốn học thêm tiếng Anh để đi du lịch nước ngoài.",
    "Chiếc xe đạp cũ vẫn chạy tốt sau ngần ấy năm.",
    "Bữa cơm gia đình luôn ấm cúng vào dịp Tết Nguyên Đán.",
    "Học sinh được nghỉ hè từ đầu tháng sáu.",
    "Quyển vở này là món quà của người bạn thân.",
    "Trên bàn có một lọ hoa cúc và mấy quả cam.",
    "Cơn gió lạnh tràn về khiến nhiệt độ giảm mạnh.",
    "Ủy ban nhân dân xã tổ chức họp dân vào chiều thứ bảy.",
    "Em bé ngủ ngon lành trong vòng tay của mẹ.",
    "Nhà khoa học trẻ vừa công bố một nghiên cứu quan trọng.",
    "Ngọn núi ấy cao hơn hai nghìn mét so với mực nước biển.",
    "Ở quê tôi, mùa nước nổi thường bắt đầu vào tháng tám.",
    "Bạn Hương viết chữ rất đẹp và luôn giữ vở sạch sẽ.",
    "Cửa hàng mở cửa từ bảy giờ sáng đến mười giờ tối.",
    "Nghệ nhân làng gốm kể lại chuyện nghề của ông cha.",
    "Đêm trăng rằm, lũ trẻ rước đèn ông sao khắp xóm.",
    "Ai cũng mong một năm mới bình an và hạnh phúc.",
    "Ếch kêu ộp ộp ngoài ruộng sau cơn mưa rào.",
    "Ước mơ của Yến là trở thành kỹ sư xây dựng.",
)
PUNCTUATION = (",", ".", ";", ":", "?", "!")


def _front_rhyme(rhyme: str) -> bool:
    """Rhymes written with k/gh/ngh instead of c/g/ng (front vowels i, e, ê, y)."""
    return rhyme[0] in "ieêy"


def _onset_fits(onset: str, rhyme: str) -> bool:
    if onset in ("k", "gh", "ngh"):
        return _front_rhyme(rhyme)
    if onset in ("c", "g", "ng"):
        return not _front_rhyme(rhyme)
    if onset == "qu":  # "qu" already holds the u/o glide
        return rhyme[0] in "aăâeêơiy" and not rhyme.startswith(("ia", "iê", "yê"))
    if onset == "gi":  # gi + i... is spelled with a single i
        return rhyme[0] != "i" and not rhyme.startswith("y")
    if rhyme.startswith("yê"):  # yê- only opens a syllable; after an onset it is spelled iê-
        return onset == ""
    return True


def _tone_position(rhyme: str) -> int:
    """Index of the vowel that carries the tone mark (traditional placement: hòa, thủy)."""
    end = 0
    while end < len(rhyme) and rhyme[end] in VOWELS:
        end += 1
    marked = [i for i in range(end) if rhyme[i] in MARKED_VOWELS]
    if marked:
        return marked[-1]
    if end < len(rhyme) or end == 1:  # closed syllable or a single vowel: the last vowel
        return end - 1
    return 1 if end == 3 else 0  # oai → a, ai → a, uya → y


def add_tone(rhyme: str, mark: str) -> str:
    """Put a tone's combining mark on the right vowel of a rhyme; returns NFC."""
    i = _tone_position(rhyme)
    return unicodedata.normalize("NFC", rhyme[: i + 1] + mark + rhyme[i + 1 :])


SYLLABLE_PARTS = tuple((o, r) for o in ONSETS for r in RHYMES if _onset_fits(o, r))


def random_syllable(rng: random.Random) -> str:
    onset, rhyme = rng.choice(SYLLABLE_PARTS)
    marks = STOP_TONE_MARKS if rhyme.endswith(("p", "t", "c", "ch")) else TONE_MARKS
    return onset + add_tone(rhyme, rng.choice(marks))


def _random_phrase(rng: random.Random) -> list[str]:
    words = [random_syllable(rng) for _ in range(rng.randint(2, 6))]
    # Capitalised names and the odd all-caps word (headings, acronyms) reach the upper-case letters.
    words = [_case(w, rng.random()) for w in words]
    if rng.random() < 0.3:
        words[-1] += rng.choice(PUNCTUATION)
    return words


def _case(word: str, u: float) -> str:
    return word.upper() if u < 0.06 else word.capitalize() if u < 0.2 else word


def _sentence_window(rng: random.Random) -> list[str]:
    words = rng.choice(SENTENCES).split()
    start = rng.randrange(len(words))
    return words[start : start + rng.randint(3, 10)]


def generate_lines(n: int, seed: int = 0, min_chars: int = 25, max_chars: int = 65) -> list[str]:
    """`n` NFC text lines of roughly min_chars..max_chars, mixing sentence fragments and syllables."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        target = rng.randint(min_chars, max_chars)
        words: list[str] = []
        while len(" ".join(words)) < target:
            words += _sentence_window(rng) if rng.random() < 0.4 else _random_phrase(rng)
        line = " ".join(words)
        cut = line.rfind(" ", 0, max_chars + 1)
        if len(line) > max_chars and cut > 0:  # trim at a word boundary, keeping at least one word
            line = line[:cut]
        lines.append(line)
    return lines
