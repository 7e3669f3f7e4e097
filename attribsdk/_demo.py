"""The example behind ``attribsdk demo`` / ``make demo``.

From HotpotQA (dev, distractor setting; Yang et al., 2018; CC BY-SA 4.0): the two gold paragraphs
of example 5abd94525542992ac4f382d2. The supporting facts are the first sentence of each paragraph.
"""

QUESTION = "2014 S/S is the debut album of a South Korean boy group that was formed by who?"
CONTEXT = [
    "2014 S/S: 2014 S/S is the debut album of South Korean group WINNER. It was released on August "
    "12, 2014 by the group's record label, YG Entertainment. The members were credited for writing "
    "the lyrics and composing the majority of the album's songs.",
    "Winner (band): Winner (Hangul: 위너), often stylized as WINNER, is a South Korean boy group "
    "formed in 2013 by YG Entertainment and debuted in 2014. It currently consists of four members, "
    "Jinwoo, Seunghoon, Mino and Seungyoon. Originally a five-piece group with Taehyun, who later "
    "departed from the group in November 2016.",
]
